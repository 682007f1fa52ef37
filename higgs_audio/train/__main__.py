"""``torchrun --nproc-per-node N -m higgs_audio.train DATA -o OUT ...``: ``higgs-audio finetune`` in each process."""

import sys

from higgs_audio.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
