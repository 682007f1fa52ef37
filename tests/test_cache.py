import torch

from higgs_audio.cache import codes_dir, fingerprint, kernel_dir, prefix_dir


def test_fingerprint_follows_the_files_and_options(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    first = fingerprint(tmp_path, "float32", None)
    assert fingerprint(tmp_path, "float32", None) == first
    assert fingerprint(tmp_path, "bfloat16", None) != first
    (tmp_path / "model.safetensors").write_bytes(b"1" * 11)
    assert fingerprint(tmp_path, "float32", None) != first


def test_fingerprint_of_weights_sees_any_sampled_change_and_parts_do_not_run_together():
    weights = {"a.weight": torch.arange(4096, dtype=torch.float32), "b.bias": torch.zeros(3)}
    first = fingerprint({"sr": 24000}, weights)
    assert fingerprint({"sr": 24000}, {k: v.clone() for k, v in weights.items()}) == first
    changed = dict(weights, **{"b.bias": torch.tensor([0.0, 0.0, 1e-3])})
    assert fingerprint({"sr": 24000}, changed) != first
    assert fingerprint({"sr": 16000}, weights) != first
    assert fingerprint(b"ab", b"c") != fingerprint(b"a", b"bc")


def test_derived_folders_follow_the_cache_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HIGGS_AUDIO_CACHE", str(tmp_path / "codes"))
    assert codes_dir() == tmp_path / "codes"
    assert prefix_dir() == tmp_path / "codes" / "prefixes"
    assert kernel_dir() == tmp_path / "codes" / "kernels"
    monkeypatch.delenv("HIGGS_AUDIO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert codes_dir() == tmp_path / "xdg" / "higgs-audio" / "codes"
    assert kernel_dir() == tmp_path / "xdg" / "higgs-audio" / "kernels"
