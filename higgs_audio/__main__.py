"""``python -m higgs_audio`` runs the ``higgs-audio`` command."""

import sys

from higgs_audio.cli import main

sys.exit(main())
