"""Loading both checkpoint formats: identical weights, weight-norm folding, strict and safe checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_audio.codec import AudioCodec
from higgs_audio.errors import CheckpointError
from tests.codec.signals import speech_like


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_pth(directory: Path, edit) -> None:
    state = torch.load(directory / "model.pth", weights_only=True)
    edit(state)
    torch.save(state, directory / "model.pth")


def _edit_config(directory: Path, edit) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    edit(cfg)
    (directory / "config.json").write_text(json.dumps(cfg))


def test_both_formats_load_identical_tensors_and_outputs(tiny_codec_dirs, tiny_codec):
    native = AudioCodec.from_pretrained(tiny_codec_dirs[1])
    ours, theirs = tiny_codec.model.state_dict(), native.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    wave = speech_like(30000)
    codes = tiny_codec.encode(wave, 24000)
    assert torch.equal(codes, native.encode(wave, 24000))
    assert np.array_equal(tiny_codec.decode(codes), native.decode(codes))
    assert native.config == tiny_codec.config
    assert (native.sample_rate, native.frame_rate, native.hop_length) == (24000, 25, 960)
    assert (native.num_codebooks, native.codebook_size) == (8, 1024)


def test_weight_norm_is_folded_over_the_right_dims(tiny_codec_dirs, tiny_codec):
    raw = torch.load(tiny_codec_dirs[0] / "model.pth", weights_only=True)
    sd = tiny_codec.model.state_dict()
    # Acoustic convs: norm per output row (dim 0).
    g, v = raw["encoder.block.1.block.4.weight_g"], raw["encoder.block.1.block.4.weight_v"]
    assert torch.allclose(sd["acoustic_encoder.block.0.conv1.weight"], g * v / v.norm(dim=(1, 2), keepdim=True))
    # Transposed convs: dim 0 is the input channel.
    g, v = raw["decoder_2.model.1.block.1.weight_g"], raw["decoder_2.model.1.block.1.weight_v"]
    assert torch.allclose(sd["acoustic_decoder.block.0.conv_t1.weight"], g * v / v.norm(dim=(1, 2), keepdim=True))
    # HuBERT's positional conv: norm per kernel tap (dim 2), not per row.
    key = "semantic_model.encoder.pos_conv_embed.conv"
    g, v = raw[key + ".weight_g"], raw[key + ".weight_v"]
    assert g.shape == (1, 1, v.shape[2])
    assert torch.allclose(sd[key + ".weight"], g * v / v.norm(dim=(0, 1), keepdim=True))


def test_pos_conv_parametrization_naming_in_the_original_format(tiny_codec_dirs, tiny_codec, tmp_path):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    key = "semantic_model.encoder.pos_conv_embed.conv."

    def rename(state):
        state[key + "parametrizations.weight.original0"] = state.pop(key + "weight_g")
        state[key + "parametrizations.weight.original1"] = state.pop(key + "weight_v")

    _edit_pth(directory, rename)
    loaded = AudioCodec.from_pretrained(directory).model.state_dict()
    assert torch.equal(loaded[key + "weight"], tiny_codec.model.state_dict()[key + "weight"])


def test_pickles_that_need_more_than_tensors_are_refused(tiny_codec_dirs, tmp_path):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    state = torch.load(directory / "model.pth", weights_only=True)
    state["extra"] = Path("/not/a/tensor")  # unpickling this needs a class import: weights_only refuses
    torch.save(state, directory / "model.pth")
    with pytest.raises(CheckpointError, match=r"model\.pth.*weights_only"):
        AudioCodec.from_pretrained(directory)


def test_non_dict_pth_is_refused(tiny_codec_dirs, tmp_path):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    torch.save([torch.zeros(1)], directory / "model.pth")
    with pytest.raises(CheckpointError, match="flat state dict"):
        AudioCodec.from_pretrained(directory)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("fc_prior.bias"), r"missing.*'fc\.bias'"),
        (lambda s: s.update(surprise=torch.zeros(1)), r"unexpected.*'surprise'"),
        (lambda s: s.update({"fc_post2.bias": torch.zeros(3)}),
         r"fc2\.bias \(stored as fc_post2\.bias\): expected shape \(16,\), found \(3,\)"),
        (lambda s: s.pop("encoder.block.0.weight_g"), r"encoder\.block\.0\.weight_v.*no matching"),
        (lambda s: s.update({"semantic_model.encoder.pos_conv_embed.conv.weight_g": torch.ones(32, 1, 1)}),
         r"pos_conv_embed\.conv\.weight_g: expected shape \(1, 1, 16\).*dim 2"),
        (lambda s: s.update({"quantizer.vq.layers.3._codebook.inited": torch.zeros(1)}), "never trained"),
    ],
    ids=["missing", "unexpected", "shape", "orphan-v", "pos-conv-dim", "uninitialised-codebook"],
)
def test_strict_checks_name_file_key_and_shapes(tiny_codec_dirs, tmp_path, edit, message):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    _edit_pth(directory, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        AudioCodec.from_pretrained(directory)
    assert str(directory / "model.pth") in str(err.value)


def test_extra_quantizer_layers_are_ignored_like_the_reference(tiny_codec_dirs, tiny_codec, tmp_path):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")

    def add_layer(state):
        for key in [k for k in state if k.startswith("quantizer.vq.layers.0.")]:
            state[key.replace("layers.0.", "layers.8.")] = state[key].clone()

    _edit_pth(directory, add_layer)
    assert AudioCodec.from_pretrained(directory).num_codebooks == 8


def test_transformers_format_strict_checks(tiny_codec_dirs, tmp_path):
    directory = _copy(tiny_codec_dirs[1], tmp_path / "ck")
    state = load_file(directory / "model.safetensors")
    state["fc.weight"] = state["fc.weight"][:, :5].contiguous()
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor fc\.weight: expected shape \(48, 48\)"):
        AudioCodec.from_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        AudioCodec.from_pretrained(directory)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(bins=[8, 5, 5, 5]), "residual FSQ"),
        (lambda c: c.update(vq_scale=2), "vq_scale"),
        (lambda c: c.update(downsample_mode="avg"), "downsample_mode"),
        (lambda c: c.update(mystery=1), r"unknown keys \['mystery'\]"),
        (lambda c: c.update(model_type="llama"), "not an audio codec"),
        (lambda c: (c.pop("semantic_model_config"), c.update(semantic_techer="wavlm")), "teacher 'wavlm'"),
    ],
)
def test_config_variants_we_do_not_build_are_refused(tiny_codec_dirs, tmp_path, edit, message):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    _edit_config(directory, edit)
    with pytest.raises(CheckpointError, match=message):
        AudioCodec.from_pretrained(directory)


def test_missing_files(tiny_codec_dirs, tmp_path):
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")
    (directory / "model.pth").unlink()
    with pytest.raises(CheckpointError, match=r"model\.pth is missing"):
        AudioCodec.from_pretrained(directory)
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        AudioCodec.from_pretrained(tmp_path)


def test_bfloat16_loading_stores_rounded_weights_and_runs(tiny_codec_dirs, tiny_codec):
    """bf16 loading rounds every weight once and runs. How close its codes come to float32's depends on the
    CPU's bf16 convolution kernels (0.95 of codes agree on an AMD EPYC, 0.22 on an Intel Xeon with AMX: see
    README), so nothing about code agreement holds everywhere, and the library loads the codec in float32."""
    half = AudioCodec.from_pretrained(tiny_codec_dirs[0], dtype=torch.bfloat16)
    full_state, half_state = tiny_codec.model.state_dict(), half.model.state_dict()
    assert all(torch.equal(half_state[k], full_state[k].bfloat16()) for k in full_state)
    wave = speech_like(48000)
    codes = half.encode(wave, 24000)
    assert codes.dtype == torch.int64 and codes.shape == (8, tiny_codec.num_frames(48000))
    assert 0 <= codes.min() and codes.max() < tiny_codec.codebook_size
    audio = half.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (codes.shape[1] * 960,) and np.isfinite(audio).all()


def test_parametrization_naming_for_every_weight_norm_pair(tiny_codec_dirs, tiny_codec, tmp_path):
    """Checkpoints saved with torch's newer weight-norm parametrization name the pairs original0/original1."""
    directory = _copy(tiny_codec_dirs[0], tmp_path / "ck")

    def rename(state):
        for key in [k for k in state if k.endswith((".weight_g", ".weight_v"))]:
            suffix = "original0" if key.endswith("_g") else "original1"
            state[key[: -len(".weight_g")] + ".parametrizations.weight." + suffix] = state.pop(key)

    _edit_pth(directory, rename)
    loaded, expected = AudioCodec.from_pretrained(directory).model.state_dict(), tiny_codec.model.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
