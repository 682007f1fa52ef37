"""The benchmarks' pictures: drawn from results shaped as the scripts make them, captioned with the machine."""

from __future__ import annotations

import datetime

import pytest

pytest.importorskip("matplotlib", reason="the dev extra installs matplotlib")
from matplotlib.image import imread  # noqa: E402

from benchmarks import plots  # noqa: E402


def test_caption_names_the_cpu_and_the_date():
    caption = plots.machine("cpu")
    with open("/proc/cpuinfo") as f:
        model = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), None)
    if model:
        assert f"CPU: {model}," in caption
    assert datetime.date.today().isoformat() in caption and "GPU" not in caption


def _png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert not path.with_name(path.name + ".partial").exists()
    return image


def test_generation_picture(tmp_path):
    stream = {"frames_per_s": 10.0, "prefill_s": 1.0, "step_ms": 100.0}
    results = {
        "int8": {"first_frame_s": 2.0, "peak_memory_gib": 4.0, "decode_frames_per_s": 10.0,
                 "streams_1": stream, "streams_4": {**stream, "frames_per_s": 30.0}},
        "auto": {"error": "out of memory"},  # a failed configuration is left out, not drawn as zero
        "port": {"first_frame_s": 9.0, "peak_memory_gib": 12.0, "decode_frames_per_s": 3.0},
    }
    _png(plots.generation(results, [1, 4], tmp_path / "img" / "generate.png", "caption"))


def test_codec_and_server_pictures(tmp_path):
    _png(plots.codec({"encode": (0.01, 0.02), "decode": (0.005, 0.006)},
                     {"one stream": 0.1, "4 streams, one by one": 0.12, "4 streams together": 0.09},
                     tmp_path / "codec.png", "caption"))
    rows = [{"clients": c, "audio_s_per_s": c * 1.0, "ttfa_p50_s": 0.5, "ttfa_p95_s": 0.8} for c in (1, 2, 4)]
    _png(plots.server({"batched": rows, "unbatched": rows}, tmp_path / "server.png", "caption"))
