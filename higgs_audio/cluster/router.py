"""Voice-affinity routing: a request in a voice goes to the engine replica whose prefix cache holds it.

Each voice has a home replica, picked by rendezvous hashing of the voice key over the live replicas' ids:
every ingress replica picks the same home without sharing state, and when a replica comes or goes only the
voices homed on it move. A request goes home unless home runs more than ``max_imbalance`` requests more
than the least-loaded replica; then (and for requests without a voice) Ray's default power-of-two choice.

Runs inside the caller's deployment handle (Ray Serve's ``RequestRouter``, an alpha API in ray 2.60); the
voice key travels as the ``voice=`` keyword argument of the engine call.
"""

from __future__ import annotations

import hashlib

# Ray's own power-of-two choice, called for the requests that do not go home (its prefix-aware LLM router
# does the same); not subclassed, because its FIFO mixin would hand a chosen home to an older request.
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import LocalityMixin, MultiplexMixin, PendingRequest, RequestRouter, RunningReplica


def _weight(voice: str, replica: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{voice}\0{replica}".encode(), digest_size=8).digest(), "big")


def home_replica(voice: str, replicas: list[RunningReplica]) -> RunningReplica:
    return max(replicas, key=lambda r: _weight(voice, r.replica_id.unique_id))


class VoiceAffinityRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, max_imbalance: int = 2) -> None:
        self.max_imbalance = max_imbalance

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        voice = pending_request.kwargs.get("voice") if pending_request is not None else None
        if voice and len(candidate_replicas) > 1:
            home = home_replica(voice, candidate_replicas)
            loads = {r.replica_id: n for r, n in await self._probe_queue_lens(candidate_replicas, 0) if n is not None}
            mine = loads.get(home.replica_id)
            if mine is not None and mine - min(loads.values()) <= self.max_imbalance:
                return [[home]]
        return await PowerOfTwoChoicesRequestRouter.choose_replicas(self, candidate_replicas, pending_request)
