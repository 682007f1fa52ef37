"""The ingress side of the cluster: the routes' backend (server/backend.py) over the engine deployment.

Each request goes to one engine replica as a streaming call (``handle.options(stream=True)``) carrying its
voice key, which the voice-affinity router reads. A replica that dies mid-stream ends its streams with a
503 (a truncated response once audio has been sent) as soon as Ray reports the actor gone; the next
requests go to the live replicas while Serve starts a replacement.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator

import ray
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from higgs_audio.server.backend import Chunk, Finish, Work
from higgs_audio.server.errors import APIError
from higgs_audio.server.metrics import Metrics

log = logging.getLogger(__name__)

BROADCAST_TIMEOUT_S = 5.0
# What the ingress itself measures; every other family comes from the engine replicas.
INGRESS_METRICS = ("higgs_requests_total", "higgs_request_duration_seconds", "higgs_time_to_first_audio_seconds")


class RayBackend:
    def __init__(self, engine: DeploymentHandle):
        self.engine = engine
        self.streaming = engine.options(stream=True)
        self.metrics = Metrics()
        self.sample_rate, self.max_reference_seconds = 0, 0.0
        self.where = f"{socket.gethostname()}:{os.getpid()}@{ray.get_runtime_context().get_node_id()[:8]}"

    async def start(self) -> None:
        limits = await self.engine.limits.remote()  # waits for the first engine replica
        self.sample_rate, self.max_reference_seconds = limits["sample_rate"], limits["max_reference_seconds"]

    async def stop(self) -> None:
        pass

    async def generate(self, work: Work) -> AsyncIterator[Chunk | Finish]:
        response = self.streaming.generate.remote(work, voice=work.voice_key())
        try:
            async for event in response:
                if isinstance(event, APIError):
                    raise event
                yield event
        except BackPressureError:
            raise APIError(429, "the engines are busy: too many queued requests; retry later",
                           code="rate_limit_exceeded") from None
        except RayError as e:
            log.warning("request %s: engine replica failed: %s", work.request_id, e)
            raise APIError(503, "the engine replica serving this request failed; retry the request",
                           code="replica_failed") from None
        finally:
            response.cancel()  # no-op when it finished; stops the generation when the client went away

    async def _broadcast(self, method: str) -> list:
        """Every live engine replica's answer to ``method`` (failures left out)."""
        answers = await self.engine.broadcast(method).results_async(timeout_s=BROADCAST_TIMEOUT_S,
                                                                    return_exceptions=True)
        return [a for a in answers if not isinstance(a, BaseException)]

    async def health(self) -> tuple[bool, dict]:
        """Healthy while at least one engine replica answers; the counts are summed over them."""
        stats = await self._broadcast("stats")
        summed = {key: sum(s[key] for s in stats) for key in ("queued", "active", "max_batch")}
        return bool(stats), {**summed, "replicas": sorted(s["replica"] for s in stats), "ingress": self.where}

    async def metrics_text(self) -> str:
        """The ingress's request metrics and each engine replica's metrics, labelled ``replica``."""
        texts = [({}, self.metrics.render())]
        texts += [({"replica": replica}, text) for replica, text in await self._broadcast("metrics_text")]
        return merge_exposition(texts, ingress=INGRESS_METRICS)


def merge_exposition(texts: list[tuple[dict[str, str], str]], ingress: tuple[str, ...]) -> str:
    """One Prometheus text from several: each family's HELP and TYPE once, then every source's samples with
    its labels added. The first source contributes only the ``ingress`` families, the others all but those."""
    families: dict[str, list[str]] = {}
    for i, (labels, text) in enumerate(texts):
        extra = ",".join(f'{k}="{v}"' for k, v in labels.items())
        family = None
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family = line.split()[2]
                keep = (family in ingress) == (i == 0)
                if keep and family not in families:
                    families[family] = [line]
            elif line.startswith("# TYPE "):
                if keep and len(families[family]) == 1:
                    families[family].append(line)
            elif line and keep:
                families[family].append(_labelled(line, extra) if extra else line)
    return "\n".join(line for lines in families.values() for line in lines) + "\n"


def _labelled(sample: str, extra: str) -> str:
    name, _, value = sample.rpartition(" ")
    if name.endswith("}"):
        return f"{name[:-1]},{extra}}} {value}"
    return f"{name}{{{extra}}} {value}"
