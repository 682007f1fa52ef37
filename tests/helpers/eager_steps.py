"""The CUDA-graph decode path without a GPU: ``EagerSteps`` behaves as ``cuda_graphs.CapturedSteps`` but runs
the captured function again at each replay, so the CPU tests cover the all-audio step's logic."""

from __future__ import annotations


class EagerSteps:
    def __init__(self):
        self._fns = {}

    def capture(self, key, fn) -> None:
        fn()  # as the real capture's first run, which changes idle slots' state
        self._fns[key] = fn

    def replay(self, key):
        return self._fns[key]()


def use_eager_steps(decoder) -> None:
    """Switch a static (``compile=True``) CPU decoder to the all-audio step the CUDA path replays."""
    decoder._graphs = EagerSteps()
    decoder._capture_audio_steps()
