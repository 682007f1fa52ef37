"""The CUDA-graph decode path without a GPU: ``EagerSteps`` behaves as ``cuda_graphs.CapturedSteps`` (outputs
included: each replay overwrites the tensors the capture returned) but runs the function again at each
replay, so the CPU tests cover the graphed steps' logic and the use of their outputs."""

from __future__ import annotations


class EagerSteps:
    def __init__(self):
        self._steps = {}

    def __contains__(self, key) -> bool:
        return key in self._steps

    def capture(self, key, fn) -> None:
        self._steps[key] = (fn, fn())  # as the real capture's first run, which changes idle slots' state

    def replay(self, key):
        fn, out = self._steps[key]
        fresh = fn()
        statics, news = (out, fresh) if isinstance(out, tuple) else ((out,), (fresh,))
        for static, new in zip(statics, news):
            static.copy_(new)
        return out


def use_eager_steps(decoder, fuse=None) -> None:
    """Switch a CPU decoder to the static-shape steps that the CUDA path (``compile=True``) replays; ``fuse``: the
    torch.compile backend for the all-audio step, as ``fuse=True`` gives inductor on CUDA."""
    decoder._use_graphs(EagerSteps(), fuse)
