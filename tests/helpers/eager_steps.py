"""The CUDA-graph decode path without a GPU: ``EagerSteps`` behaves as ``cuda_graphs.CapturedSteps`` (outputs
included: each replay overwrites the tensors the capture returned) but runs the function again at each
replay, so the CPU tests cover the all-audio step's logic and the use of its outputs."""

from __future__ import annotations


class EagerSteps:
    def __init__(self):
        self._steps = {}

    def capture(self, key, fn) -> None:
        self._steps[key] = (fn, fn())  # as the real capture's first run, which changes idle slots' state

    def replay(self, key):
        fn, out = self._steps[key]
        for static, fresh in zip(out, fn()):
            static.copy_(fresh)
        return out


def use_eager_steps(decoder) -> None:
    """Switch a static (``compile=True``) CPU decoder to the all-audio step the CUDA path replays."""
    decoder._graphs = EagerSteps()
    decoder._capture_audio_steps()
