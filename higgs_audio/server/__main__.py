"""``python -m higgs_audio.server ...``: the same as ``higgs-audio serve ...``."""

import argparse

from higgs_audio.server import add_serve_arguments, run_serve

parser = argparse.ArgumentParser(prog="python -m higgs_audio.server")
add_serve_arguments(parser)
raise SystemExit(run_serve(parser.parse_args()))
