"""One Ray cluster of two nodes on 127.0.0.1 for the whole module, with the application deployed on it.

Refuses to run outside a loopback-only network namespace (see namespace.py): .ci/run runs this folder
inside one, after the main test run (which leaves it out, see tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.cluster.namespace import RAY_ENV, loopback_only, refusal
from tests.helpers.metrics import scrape

if not loopback_only():
    raise pytest.UsageError(refusal())
os.environ.update(RAY_ENV)  # before any Ray node starts

ROOT = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False}
STARTUP_S = 180


class RayCluster:
    """Two Ray nodes (one CPU each: one engine replica per node) and the application, served on ``url``."""

    def __init__(self, flags: dict, voices: Path):
        assert loopback_only(), refusal()  # the last check before Ray starts
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from higgs_audio.cluster import app
        from higgs_audio.cluster.deployments import APP_NAME
        from tests.server.conftest import free_port

        self.voices = voices
        self.tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
        os.environ.update(RAY_TMPDIR=self.tmp, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.cluster = Cluster(initialize_head=True, head_node_args=NODE)
        self.cluster.add_node(**NODE)
        ray.init(address=self.cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(app(flags), name=APP_NAME, route_prefix="/")
        self.url = f"http://127.0.0.1:{port}"
        self.processes = psutil.Process().children(recursive=True)
        self.down = False

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 120, **kwargs})

    def health(self) -> dict:
        with self.client() as c:
            return c.get("/health").json()

    def wait_for_replicas(self, n: int, timeout: float) -> float:
        """Seconds until ``/health`` counts ``n`` engine replicas."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if len(self.health().get("replicas", ())) == n:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(f"not {n} replicas after {timeout} s: {self.health()}")

    def metrics(self) -> dict[str, float]:
        with self.client() as c:
            return scrape(c)

    def shutdown(self) -> list[psutil.Process]:
        """Stop everything; returns the processes this cluster started that are still alive 15 s later."""
        if self.down:
            return []
        self.down = True
        import ray
        from ray import serve

        self.processes = {*self.processes, *psutil.Process().children(recursive=True)}
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()
        _, alive = psutil.wait_procs(list(self.processes), timeout=15)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return alive


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, tiny_original, tiny_codec):
    """Autoscaling from 1 to 2 engine replicas (one per node) on one ongoing request each; short
    generations (40 steps unless a request asks for more, up to 2000); the voice router leaves a voice's
    replica as soon as it is busier than the other (slack 0), so that tests can reach both."""
    tmp = tmp_path_factory.mktemp("cluster")
    voices = tmp / "voices"
    voices.mkdir()
    os.environ["HIGGS_AUDIO_CACHE"] = str(tmp / "cache")
    flags = {
        "model": str(tiny_original), "codec": str(tiny_codec), "device": "cpu", "dtype": "float32",
        "voices_dir": [str(voices)], "max_len": 1024, "max_batch": 4, "prefill_chunk": 16,
        "max_new_tokens": 2000, "log_level": "warning",
        "replicas": 1, "min_replicas": 1, "max_replicas": 2, "target_ongoing": 1, "upscale_delay": 1,
        "downscale_delay": 600, "autoscale_window": 2, "max_replicas_per_node": 1, "affinity_slack": 0,
    }
    cluster = RayCluster(flags, voices)
    yield cluster
    cluster.shutdown()
