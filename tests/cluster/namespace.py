"""Ray must run inside a private network namespace that holds only loopback (docs/scaling.md, "Testing"):
it binds the machine's external interface whatever it is told and probes cloud metadata and a
usage-statistics address even when told not to report."""

from __future__ import annotations

import socket

RUN = "unshare -n sh -c 'ip link set lo up && exec python -m pytest tests/cluster'"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",  # a closed loopback port, if it reports anyway
    # Autoscaling decisions within seconds rather than tens of seconds (read when the nodes start).
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


def interfaces() -> list[str]:
    """This process's network namespace's interfaces (not /sys/class/net: that shows the namespace that
    mounted /sys)."""
    return sorted(name for _, name in socket.if_nameindex())


def loopback_only() -> bool:
    return interfaces() == ["lo"]


def refusal() -> str:
    return (f"tests/cluster start Ray, which must run in a loopback-only network namespace; this one has the "
            f"interfaces {', '.join(interfaces())}. Run them as root with: {RUN}")
