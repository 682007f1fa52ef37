"""The documented Serve config and the router's choice of home replica, without starting Ray."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from ray.serve.schema import ServeDeploySchema

from higgs_audio.cluster import app
from higgs_audio.cluster.router import VoiceAffinityRouter, home_replica

CONFIG = Path(__file__).resolve().parents[2] / "docs" / "serve-config.yaml"


def test_the_documented_config_builds_the_application():
    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    [application] = config["applications"]
    assert application["import_path"] == "higgs_audio.cluster:app"
    ingress = app(application["args"])._bound_deployment  # Serve keeps the bound deployments private
    engine = ingress.init_args[0]._bound_deployment
    assert ingress.ray_actor_options["num_cpus"] == 0
    assert engine.ray_actor_options["num_gpus"] == 1  # device: cuda
    scaling = engine._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 8, 12)
    router = engine._deployment_config.request_router_config
    assert router.request_router_class.endswith("VoiceAffinityRouter") and router.request_router_kwargs == {
        "max_imbalance": 2}
    flags = ingress.init_args[1]
    assert flags["voices_dir"] == ["/mnt/shared/voices"] and flags["max_batch"] == 16 and flags["compile"] is True


def test_default_router_and_cpu_replicas():
    engine = app({"replicas": 3, "router": "default"})._bound_deployment.init_args[0]._bound_deployment
    assert engine.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0}
    assert engine._deployment_config.num_replicas == 3
    assert engine._deployment_config.request_router_config.request_router_class != (
        f"{VoiceAffinityRouter.__module__}.{VoiceAffinityRouter.__name__}")


def _replicas(*ids: str):
    return [SimpleNamespace(replica_id=SimpleNamespace(unique_id=i)) for i in ids]


def test_a_voice_keeps_its_home_unless_its_replica_goes():
    voices = [f"voice:v{i}" for i in range(200)]
    three = _replicas("a", "b", "c")
    homes = {v: home_replica(v, three).replica_id.unique_id for v in voices}
    assert set(homes.values()) == {"a", "b", "c"}  # spread over every replica
    assert homes == {v: home_replica(v, list(reversed(three))).replica_id.unique_id for v in voices}
    two = [r for r in three if r.replica_id.unique_id != "b"]
    moved = {v for v in voices if home_replica(v, two).replica_id.unique_id != homes[v]}
    assert moved == {v for v in voices if homes[v] == "b"}  # only the lost replica's voices move
