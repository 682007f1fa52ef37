"""``python -m higgs_audio.server ...``: the same as ``higgs-audio serve ...``."""

import argparse

from higgs_audio.server import add_serve_arguments, run_serve

parser = argparse.ArgumentParser(prog="python -m higgs_audio.server")
add_serve_arguments(parser)
parser.add_argument("--voices-dir", action="append", metavar="DIR",
                    help="voice library folder (repeatable; default: $HIGGS_AUDIO_VOICES or the per-user one)")
raise SystemExit(run_serve(parser.parse_args()))
