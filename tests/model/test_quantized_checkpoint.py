"""A quantized copy saved by ``higgs-audio quantize`` loads to exactly the model quantized at load time."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_audio.checkpoint import load_model
from higgs_audio.errors import CheckpointError
from higgs_audio.model.quantize import Int4Linear, Int8Linear
from higgs_audio.quantized_checkpoint import QUANTIZATION_FILE, WEIGHTS_FILE, save_quantized
from tests.model.test_quantize import _teacher_forced_logits, small_dir  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def saved(small_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("quantized")
    return {mode: save_quantized(small_dir, root / mode, mode) for mode in ("int8", "int4")}


@pytest.mark.parametrize("mode, layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_saved_copy_loads_to_the_same_model(small_dir, saved, mode, layer):  # noqa: F811
    model, _, _ = load_model(saved[mode], device="cpu")
    assert isinstance(model.layers[1].mlp.down_proj, layer) and isinstance(model.audio_head, layer)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    again = _teacher_forced_logits(saved[mode])
    assert torch.equal(again, _teacher_forced_logits(small_dir, quantize=mode))
    assert torch.equal(again, _teacher_forced_logits(saved[mode], quantize=mode))  # asking for its mode is fine


def test_saved_copy_is_self_contained_and_smaller(small_dir, saved):  # noqa: F811
    names = {p.name for p in saved["int8"].iterdir()}
    assert {"config.json", "tokenizer.json", QUANTIZATION_FILE, WEIGHTS_FILE} <= names
    assert not any(n.endswith(".index.json") or n.startswith(".") for n in names)
    assert json.loads((saved["int4"] / QUANTIZATION_FILE).read_text())["mode"] == "int4"
    source_bytes = sum(p.stat().st_size for p in small_dir.glob("*.safetensors"))
    sizes = {m: (saved[m] / WEIGHTS_FILE).stat().st_size for m in saved}
    assert sizes["int4"] < sizes["int8"] < source_bytes
    assert not [p for p in saved["int8"].parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_saved_tensors_sit_at_aligned_offsets(saved):
    """torch's CPU int8 kernel needs 64-byte aligned weights: the copy is usable as mapped, without a copy."""
    from safetensors import safe_open

    with safe_open(str(saved["int8"] / WEIGHTS_FILE), "pt") as f:
        keys = list(f.keys())
        tensors = [k for k in keys if not k.startswith("__padding__.")]
        assert all(f.get_tensor(k).data_ptr() % 64 == 0 for k in tensors)
    assert len(tensors) < len(keys)  # the filler the format needs between tensors, skipped at load


def test_other_mode_or_requantizing_is_refused(saved, tmp_path):
    with pytest.raises(CheckpointError, match="holds int8 weights and cannot be loaded as int4"):
        load_model(saved["int8"], device="cpu", quantize="int4")
    with pytest.raises(CheckpointError, match="already quantized"):
        save_quantized(saved["int8"], tmp_path / "again", "int4")


def test_existing_output_is_kept_without_force(small_dir, tmp_path):  # noqa: F811
    out = tmp_path / "q"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--force"):
        save_quantized(small_dir, out, "int8")
    assert (out / "mine.txt").read_text() == "keep me"
    save_quantized(small_dir, out, "int8", force=True)
    assert not (out / "mine.txt").exists() and (out / WEIGHTS_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def _tampered(saved_dir, tmp_path, change):
    import shutil

    copy = shutil.copytree(saved_dir, tmp_path / "tampered")
    tensors = load_file(copy / WEIGHTS_FILE)
    change(tensors)
    save_file(tensors, str(copy / WEIGHTS_FILE))
    return copy


def test_tampered_copy_is_refused_naming_the_tensor(saved, tmp_path):
    key = "layers.0.self_attn.q_proj.weight"
    copy = _tampered(saved["int8"], tmp_path, lambda t: t.update({key: t[key].float()}))
    with pytest.raises(CheckpointError, match=rf"{key}.*has dtype torch.float32; int8 needs torch.int8"):
        load_model(copy, device="cpu")
    (copy / WEIGHTS_FILE).unlink()
    copy = _tampered(saved["int8"], tmp_path / "b", lambda t: t.pop("layers.1.mlp.up_proj.scales"))
    with pytest.raises(CheckpointError, match="missing key 'layers.1.mlp.up_proj.scales'"):
        load_model(copy, device="cpu")


def test_unknown_format_is_refused(saved, tmp_path):
    import shutil

    copy = shutil.copytree(saved["int8"], tmp_path / "future")
    (copy / QUANTIZATION_FILE).write_text(json.dumps({"format": 3, "mode": "int8"}))
    with pytest.raises(CheckpointError, match=r"format 3 is not one this version reads \(1, 2\)"):
        load_model(copy, device="cpu")


def test_layout_is_recorded_and_another_layout_is_refused(saved, tmp_path):
    import shutil

    meta = json.loads((saved["int8"] / QUANTIZATION_FILE).read_text())
    assert meta["layout"] == {"rows": 4, "lanes": 16}
    copy = shutil.copytree(saved["int8"], tmp_path / "other")
    (copy / QUANTIZATION_FILE).write_text(json.dumps(dict(meta, layout={"rows": 8, "lanes": 16})))
    with pytest.raises(CheckpointError, match=r"packed as \{'rows': 8, 'lanes': 16\}.*quantize the original"):
        load_model(copy, device="cpu")
    del meta["layout"]  # written before the layout was recorded: 4 rows, 16 lanes
    (copy / QUANTIZATION_FILE).write_text(json.dumps(meta))
    assert torch.equal(_teacher_forced_logits(copy), _teacher_forced_logits(saved["int8"]))


def test_saved_int8_is_not_reordered_where_our_kernel_runs(saved, monkeypatch):
    """The copy holds int8 weights in our CPU kernel's order: loading them packs nothing."""
    from higgs_audio.model import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "pack", lambda w: pytest.fail("a saved weight was packed again at load"))
    model, _, _ = load_model(saved["int8"], device="cpu")
    assert model.layers[0].mlp.gate_up_proj.our_kernel


def test_saved_int8_loads_without_our_kernel(small_dir, saved, monkeypatch):  # noqa: F811
    """Where our kernel cannot run (no compiler; CUDA) the packed order is undone at load: the model equals the
    one quantized at load with torch's kernels."""
    from higgs_audio.model import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    model, _, _ = load_model(saved["int8"], device="cpu")
    assert not model.layers[0].mlp.gate_up_proj.our_kernel
    assert torch.equal(_teacher_forced_logits(saved["int8"]), _teacher_forced_logits(small_dir, quantize="int8"))


def test_format_1_copies_in_plain_order_still_load(saved, tmp_path):
    """Copies written before format 2 hold every int8 weight in the plain order."""
    from higgs_audio.model import cpu_kernels

    def plain(tensors):
        for key, t in tensors.items():
            if t.dtype == torch.int8 and cpu_kernels.fits(*t.shape):
                tensors[key] = cpu_kernels.unpacked(t.view(cpu_kernels.packed_shape(*t.shape))).reshape(t.shape)

    copy = _tampered(saved["int8"], tmp_path, plain)
    (copy / QUANTIZATION_FILE).write_text(json.dumps({"format": 1, "mode": "int8"}))
    assert torch.equal(_teacher_forced_logits(copy), _teacher_forced_logits(saved["int8"]))


def test_tensors_read_into_memory_equal_the_mapped_ones(saved, tmp_path):
    """A CPU load reads quantized weights with file reads (not mapped: faster to decode from, and not held in
    the resident set by the open file); they must be the same bytes, and a short file is named."""
    import shutil

    from higgs_audio.checkpoint import OUR_NAMES, TensorSource

    for mode in ("int8", "int4"):
        source = TensorSource([saved[mode] / WEIGHTS_FILE], OUR_NAMES)
        for name in source.parts:
            read, mapped = source.read(name), source.get(name)
            assert read.dtype == mapped.dtype and torch.equal(read.view(torch.uint8), mapped.view(torch.uint8))
    copy = shutil.copytree(saved["int8"], tmp_path / "short")
    data = (copy / WEIGHTS_FILE).read_bytes()
    source = TensorSource([copy / WEIGHTS_FILE], OUR_NAMES)
    (copy / WEIGHTS_FILE).write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="ends early"):
        for name in source.parts:
            source.read(name)
