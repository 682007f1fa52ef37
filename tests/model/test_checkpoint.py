"""Checkpoint reading: strictness, merging of split tensors, and one clear error per malformed case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_audio.checkpoint import load_model
from higgs_audio.config import ModelConfig
from higgs_audio.errors import CheckpointError
from higgs_audio.files import resolve
from higgs_audio.model.higgs import HiggsAudioModel
from tests.helpers.tiny_model import FULL, original_config, write_original


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory: Path, **changes) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def _rewrite_shard(directory: Path, edit) -> Path:
    """Apply ``edit`` to the first shard's tensor dict and save it back; returns the shard path."""
    shard = sorted(directory.glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))
    return shard


def test_full_size_parameter_count_matches_release():
    cfg = ModelConfig.from_dict(original_config(FULL), Path("config.json"))
    with torch.device("meta"):
        model = HiggsAudioModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n * 2 - 11_542_566_912) / 11_542_566_912 <= 0.005
    assert 5.74e9 < n < 5.80e9


def test_split_frozen_trainable_tensors_are_merged(tmp_path, tiny_weights, tiny_original):
    split = write_original(tmp_path / "split", tiny_weights, split_frozen=True, shards=3)
    a, _, _ = load_model(split, device="cpu", dtype="float32")
    b, _, _ = load_model(tiny_original, device="cpu", dtype="float32")
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k


def test_dtype_is_applied_at_load(tiny_original):
    model, _, _ = load_model(tiny_original, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_key(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "m")
    _rewrite_shard(d, lambda t: t.pop(sorted(k for k in t if k.startswith("layers."))[0]))
    with pytest.raises(CheckpointError, match=r"missing key 'layers\.\S+' \(expected shape \[\d+") as e:
        load_model(d, device="cpu")
    assert str(d) in str(e.value)


def test_unexpected_key(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "u")
    shard = _rewrite_shard(d, lambda t: t.__setitem__("layers.0.extra_proj.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match=r"unexpected key .*'layers\.0\.extra_proj\.weight'") as e:
        load_model(d, device="cpu")
    assert shard.name in str(e.value)


def test_shape_mismatch(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "s")

    def shrink(t):
        key = next(k for k in t if k.endswith("q_proj.weight"))
        t[key] = t[key][:-1].clone()

    shard = _rewrite_shard(d, shrink)
    with pytest.raises(CheckpointError, match=r"shape mismatch for .*q_proj\.weight'.*expected \[64, 64\], found \[63, 64\]") as e:
        load_model(d, device="cpu")
    assert shard.name in str(e.value)


def test_unknown_model_type(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "t")
    _edit_config(d, model_type="llama")
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'llama' is not a Higgs Audio V2"):
        load_model(d, device="cpu")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"audio_adapter_type": "stack"}, r"audio_adapter_type 'stack' is not implemented"),
        ({"skip_audio_tower": False}, r"option skip_audio_tower=False is not implemented"),
        ({"encode_whisper_embed": True}, r"option encode_whisper_embed=True is not implemented"),
        ({"audio_embed_avg": True}, r"option audio_embed_avg=True is not implemented"),
        ({"use_audio_out_self_attention": True}, r"option use_audio_out_self_attention=True is not implemented"),
        ({"audio_decoder_proj_num_layers": 2}, r"audio_decoder_proj_num_layers=2 is not implemented"),
    ],
)
def test_unimplemented_options(tmp_path, tiny_original, change, message):
    d = _copy(tiny_original, tmp_path / "o")
    _edit_config(d, **change)
    with pytest.raises(CheckpointError, match=message) as e:
        load_model(d, device="cpu")
    assert "config.json" in str(e.value)


def test_corrupt_safetensors(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "c")
    shard = sorted(d.glob("*.safetensors"))[0]
    shard.write_bytes(b"\x00garbage, not a safetensors header" * 10)
    with pytest.raises(CheckpointError, match=rf"{shard.name} is not a readable safetensors file"):
        load_model(d, device="cpu")


def test_truncated_safetensors(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "tr")
    shard = sorted(d.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*(corrupt or truncated)"):
        load_model(d, device="cpu")


def test_index_names_missing_shard(tmp_path, tiny_original):
    d = _copy(tiny_original, tmp_path / "i")
    victim = sorted(d.glob("*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"names shard {victim.name}, which is missing"):
        load_model(d, device="cpu")


def test_native_codebook_size_without_stream_tokens(tmp_path, tiny_native):
    d = _copy(tiny_native, tmp_path / "n")
    _edit_config(d, codebook_size=1024)
    with pytest.raises(CheckpointError, match=r"codebook_size 1024 does not hold the stream bos/eos"):
        load_model(d, device="cpu")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match=r"neither an existing directory nor a hub id"):
        resolve(str(tmp_path / "nope" / "deeper"))


def test_hub_id_offline_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"not in the local hub cache.*pass a local directory"):
        resolve("bosonai/higgs-audio-v2-generation-3B-base")
