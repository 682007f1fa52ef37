"""Decode steps replayed from CUDA graphs.

A decode step of a 3B model, with its sampling, is over a thousand small kernels; launched one by one from
Python, the GPU waits on the launches. Captured once into a CUDA graph, one replay launches them all. A
captured function must be device work alone over tensors that outlive it (no host syncs, no shapes that
depend on values); what it returns is overwritten by the next replay of the same graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class CapturedSteps:
    """Functions captured into CUDA graphs, one per key, and replayed by key."""

    def __init__(self):
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, object]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def capture(self, key: Hashable, fn: Callable[[], object]) -> None:
        """Capture ``fn`` under ``key``. It runs once first, for real (capture needs its lazy set-up done:
        cuBLAS handles, kernel loading), then is recorded without running."""
        side = torch.cuda.Stream()  # the first run happens off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Text and mixed steps are captured when first met, while a server's codec may be decoding in worker
        # threads on its own stream: only this thread's calls must not break the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        self._graphs[key] = (graph, out)

    def replay(self, key: Hashable):
        """Run the graph captured under ``key``; returns the outputs its capture returned, now refreshed."""
        graph, out = self._graphs[key]
        graph.replay()
        return out
