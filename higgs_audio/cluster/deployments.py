"""The Serve application, in two tiers as Ray's own LLM serving: ingress -> engine.

- ``Ingress``: the same FastAPI routes as ``higgs-audio serve`` (server/app.py), over ``RayBackend``; it
  parses and validates requests, computes each one's voice key and serves the voice library's routes from
  the library folder (which every node must share).
- ``EngineReplica``: one engine, scheduler and codec batcher (server/local.py's ``LocalBackend``) per
  replica, streaming each request's events back to the ingress.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from higgs_audio.cluster.backend import RayBackend
from higgs_audio.cluster.router import VoiceAffinityRouter
from higgs_audio.server import load_model, serve_settings
from higgs_audio.server.app import create_app
from higgs_audio.server.backend import Chunk, Finish, Work
from higgs_audio.server.errors import APIError
from higgs_audio.server.local import LocalBackend
from higgs_audio.voices import VoiceLibrary

APP_NAME = "higgs-audio"


class EngineReplica:
    def __init__(self, flags: dict):
        args = argparse.Namespace(**flags)
        logging.getLogger("higgs_audio").setLevel(args.log_level.upper())
        self.backend = LocalBackend(load_model(args), VoiceLibrary(args.voices_dir), serve_settings(args))
        # host:pid@node#replica: where it runs, and Serve's id of it (what the voice router hashes)
        node, replica = ray.get_runtime_context().get_node_id(), serve.get_replica_context().replica_id
        self.backend.replica += f"@{node[:8]}#{replica.unique_id}"
        self.backend.service.scheduler.start()

    async def generate(self, work: Work, voice: str | None = None) -> AsyncIterator[Chunk | Finish | APIError]:
        """The request's events; an ``APIError`` is sent as the last event (the ingress raises it).
        ``voice`` is for the router only."""
        async with aclosing(self.backend.generate(work)) as events:
            try:
                async for event in events:
                    yield event
            except APIError as e:
                yield e

    def limits(self) -> dict:
        """What the ingress needs to know of the engines without loading a model."""
        return {"sample_rate": self.backend.sample_rate, "max_reference_seconds": self.backend.max_reference_seconds}

    def stats(self) -> dict:
        return {**self.backend.service.scheduler.stats(), "replica": self.backend.replica}

    def metrics_text(self) -> tuple[str, str]:
        return self.backend.replica, self.backend.metrics.render()

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose scheduler thread died is replaced."""
        if not self.backend.service.scheduler.is_alive():
            raise RuntimeError("the scheduler thread is not running")

    def __del__(self):
        self.backend.service.scheduler.stop()


@serve.ingress()
class Ingress:
    def __init__(self, engine, flags: dict):
        self.engine, self.flags = engine, flags

    def __serve_build_asgi_app__(self):
        args = argparse.Namespace(**self.flags)
        settings = serve_settings(args)
        return create_app(RayBackend(self.engine), VoiceLibrary(args.voices_dir), settings)


def build_app(args: argparse.Namespace):
    """The bound application for the parsed ``cluster run`` flags (see ``add_cluster_arguments``)."""
    flags = {k: v for k, v in vars(args).items() if k != "run"}
    if args.max_replicas is not None:
        scaling = {"autoscaling_config": {
            "min_replicas": args.min_replicas, "initial_replicas": args.replicas,
            "max_replicas": args.max_replicas, "target_ongoing_requests": args.target_ongoing or args.max_batch,
            "upscale_delay_s": args.upscale_delay, "downscale_delay_s": args.downscale_delay,
            "look_back_period_s": args.autoscale_window}}
    else:
        scaling = {"num_replicas": args.replicas}
    gpus = args.replica_gpus if args.replica_gpus is not None else int(args.device.startswith("cuda"))
    extra = {"max_replicas_per_node": args.max_replicas_per_node} if args.max_replicas_per_node else {}
    if args.router == "voice":
        extra["request_router_config"] = RequestRouterConfig(
            request_router_class=VoiceAffinityRouter, request_router_kwargs={"max_imbalance": args.affinity_slack})
    engine = serve.deployment(EngineReplica).options(
        name="Engine",
        ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": gpus},
        max_ongoing_requests=args.max_batch + args.max_queue,
        graceful_shutdown_timeout_s=args.timeout,  # running streams drain before a replica stops
        **scaling, **extra,
    ).bind(flags)
    return serve.deployment(Ingress).options(
        name="Ingress", num_replicas=args.ingress_replicas, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,  # it only relays; the engines' queues bound the work
    ).bind(engine, flags)
