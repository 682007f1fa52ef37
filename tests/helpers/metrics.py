"""Reading a server's ``/metrics`` (Prometheus text) in tests."""

from __future__ import annotations

import httpx


def scrape(client: httpx.Client) -> dict[str, float]:
    """``/metrics`` as {sample line name with labels: value}."""
    samples = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
