"""A minimal Prometheus registry (counters, gauges, histograms) rendered in the text exposition format.

Small enough to own rather than add a dependency; thread-safe because the scheduler thread and the
request handlers both record into it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help, labels=()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def _samples(self):
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help, labels=(), buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list] = {}  # key -> [bucket counts..., sum, count]
        if not labels:  # an unlabelled metric exists (at zero) before its first observation
            self._series[()] = [0] * len(self.buckets) + [0.0, 0]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def _samples(self):
        lines = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, count in zip(self.buckets, series):
                le = _labels(self.label_names, key, f'le="{_number(bound)}"')
                lines.append(f"{self.name}_bucket{le} {count}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-1]}")
        return lines


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.requests = Counter("higgs_requests_total", "HTTP requests by route and status code.", ("route", "status"))
        self.latency = Histogram(
            "higgs_request_duration_seconds", "Time from request arrival to the end of the response.", ("route",)
        )
        self.first_audio = Histogram(
            "higgs_time_to_first_audio_seconds", "Time from request arrival to its first audio bytes.", ("route",)
        )
        self.audio_seconds = Counter("higgs_audio_seconds_total", "Seconds of audio generated.")
        self.queue_depth = Gauge("higgs_queue_depth", "Requests waiting for a decoding slot.")
        self.active = Gauge("higgs_active_streams", "Requests decoding right now (occupied slots).")
        self.batch_size = Histogram(
            "higgs_batch_size", "Streams advanced together by one batched decode step.", buckets=BATCH_BUCKETS
        )
        self.steps = Counter("higgs_decode_steps_total", "Batched decode steps run.")
        self.prompt_positions = Counter(
            "higgs_prompt_positions_total",
            "Prompt positions of admitted requests, by source: prefilled, or copied from the prefix cache.",
            ("source",),
        )
        self.prefix_cache_bytes = Gauge("higgs_prefix_cache_bytes", "Memory held by the prefix cache.")
        self.codec_batch = Histogram(
            "higgs_codec_batch_size", "Streams' audio chunks decoded by one streaming-codec call.", buckets=BATCH_BUCKETS
        )
        self.finished = Counter(
            "higgs_generations_total", "Generations by how they ended (stop, length, cancelled, timeout, ...).",
            ("reason",),
        )

    def render(self) -> str:
        metrics = [
            self.requests, self.latency, self.first_audio, self.audio_seconds, self.queue_depth, self.active,
            self.batch_size, self.steps, self.prompt_positions, self.prefix_cache_bytes, self.codec_batch,
            self.finished,
        ]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"
