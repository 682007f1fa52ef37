"""The server caps glibc's malloc arenas: threads that allocate share them instead of getting one each."""

import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, os, sys, tempfile, threading
from higgs_audio.server import limit_malloc_arenas
if sys.argv[1] == "cap":
    print("capped" if limit_malloc_arenas() else "not capped", file=sys.stderr)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # all allocate at once: contention is what makes glibc open new arenas
    blocks = [libc.malloc(2000) for _ in range(20000)]
    for b in blocks:
        libc.free(ctypes.c_void_p(b))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's arenas exist on Linux only")
def test_capped_process_uses_at_most_two_arenas():
    from higgs_audio.server import ARENAS

    assert _heaps("cap") <= ARENAS < _heaps("default")
