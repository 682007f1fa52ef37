"""The real server as a subprocess on 127.0.0.1 (a free port) over the tiny random checkpoints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.metrics import scrape

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, voices: Path, api_key: str | None):
        self.url, self.process, self.log, self.voices, self.api_key = url, process, log, voices, api_key

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, **{"timeout": 60, **kwargs})

    def metrics(self) -> dict[str, float]:
        with self.client() as c:
            return scrape(c)

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds ``text`` (a streamed response's access line is written when it ends, which
        may be just after the client has read it all), or as it is at the timeout."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log


def start_server(tmp: Path, model: Path, codec: Path, *args: str, api_key: str | None = None) -> Server:
    port = free_port()
    voices = tmp / "voices"
    voices.mkdir()
    env = dict(os.environ, HIGGS_AUDIO_CACHE=str(tmp / "cache"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("HIGGS_AUDIO_API_KEY", None)
    command = [
        sys.executable, "-m", "higgs_audio", "serve", "--model", str(model), "--codec", str(codec),
        "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
        "--voices-dir", str(voices), "--max-len", "1024", *args,
    ]
    if api_key:
        command += ["--api-key", api_key]
    log = tmp / "server.log"
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return Server(url, process, log, voices, api_key)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start in {STARTUP_S} s:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_original, tiny_codec):
    """Batches up to 8 requests; 40 generation steps per request at most (the random model never stops); a
    request joining running ones is prefilled 16 positions per step (several steps for every prompt)."""
    s = start_server(tmp_path_factory.mktemp("server"), tiny_original, tiny_codec,
                     "--max-batch", "8", "--max-new-tokens", "40", "--max-input-chars", "300", "--prefill-chunk", "16",
                     "--max-upload-mb", "2", "--cors-origin", "http://page.test")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory, tiny_original, tiny_codec):
    """An API key, one slot, one queued request, long generations and small uploads: for the limits."""
    s = start_server(tmp_path_factory.mktemp("strict"), tiny_original, tiny_codec,
                     "--max-batch", "1", "--max-queue", "1", "--max-new-tokens", "2000", "--max-input-chars", "4096",
                     "--max-upload-mb", "0.05", "--timeout", "4", api_key="test-secret-key")
    yield s
    stop_server(s)
