"""Pictures of the benchmarks' numbers: each script hands its results here and gets a PNG beside its text.

Needs matplotlib (in the ``dev`` extra, with the transformers port the benchmarks run against). Every picture carries a caption naming the machine (CPU
model, GPU if one ran), the torch version and the date, so a picture is never read as another machine's.
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

OURS, PORT, OTHER = "#1f5fbf", "#c2571a", "#6b7d3a"


def machine(device: str = "cpu") -> str:
    """The CPU model (and the GPU when ``device`` is CUDA), the torch version and today's date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {torch.get_num_threads()} threads"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(torch.device(device))}")
    parts += [f"torch {torch.__version__}", datetime.date.today().isoformat()]
    return " · ".join(parts)


def _figure(panels: int):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("pictures need matplotlib: pip install -e '.[dev]' (or pass --plot none)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path, title: str, caption: str) -> Path:
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.text(0.5, 0.01, caption, ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, dpi=110, format="png")
    partial.replace(path)  # a reader never sees half a picture
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _bars(ax, labels: list[str], values: list[float], colors: list[str], unit: str, fmt: str = "{:.2f}") -> None:
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
    ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=8, padding=2)
    ax.set_ylabel(unit)
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)


def generation(results: dict[str, dict], streams: list[int], path: Path, caption: str) -> Path:
    """generate.py: aggregate frames/s against streams (ours; the port runs one stream), time to the first
    decodable frame, peak memory."""
    fig, (speed, first, memory) = _figure(3)
    ok = {name: r for name, r in results.items() if "error" not in r}
    for name, r in ok.items():
        if name == "port":
            speed.scatter([1], [r["decode_frames_per_s"]], color=PORT, zorder=3, label="port (1 stream)")
            continue
        xs = [n for n in streams if f"streams_{n}" in r]
        speed.plot(xs, [r[f"streams_{n}"]["frames_per_s"] for n in xs], marker="o", label=f"ours {name}")
    speed.axhline(25, color="#888888", linestyle=":", linewidth=1)
    speed.annotate("real time, one stream (25 frames/s)", (streams[0], 25), fontsize=7, color="#666666",
                   xytext=(0, 3), textcoords="offset points")
    speed.set_xscale("log", base=2)
    speed.set_xticks(streams, [str(n) for n in streams])
    speed.set_xlabel("streams decoded together")
    speed.set_ylabel("audio frames/s, all streams")
    speed.set_ylim(bottom=0)
    speed.set_title("decode speed", fontsize=10)
    speed.grid(alpha=0.3)
    speed.legend(fontsize=7)
    names = list(ok)
    colors = [PORT if n == "port" else OURS for n in names]
    labels = ["port" if n == "port" else f"ours {n}" for n in names]
    _bars(first, labels, [ok[n]["first_frame_s"] for n in names], colors, "seconds")
    first.set_title("first audio frame (voice-clone prompt)", fontsize=10)
    _bars(memory, labels, [ok[n]["peak_memory_gib"] for n in names], colors, "GiB")
    memory.set_title("peak memory", fontsize=10)
    return _save(fig, path, "Generation: our engine against the transformers port, same weights", caption)


def codec(rtf: dict[str, tuple[float, float]], streaming: dict[str, float], path: Path, caption: str) -> Path:
    """codec.py: real-time factors (processing seconds per second of audio) of ours and the port, and of our
    streaming decode."""
    fig, (whole, stream) = _figure(2)
    labels, values, colors = [], [], []
    for name, (ours, port) in rtf.items():
        labels += [f"{name} ours", f"{name} port"]
        values += [ours, port]
        colors += [OURS, PORT]
    _bars(whole, labels, values, colors, "real-time factor (lower is faster)", "{:.4f}")
    whole.set_title("whole clip", fontsize=10)
    _bars(stream, list(streaming), list(streaming.values()), [OURS, OTHER, OURS][: len(streaming)],
          "real-time factor per stream", "{:.4f}")
    stream.set_title("streaming decode, 10-frame chunks", fontsize=10)
    return _save(fig, path, "Audio codec: real-time factors", caption)


def server(results: dict[str, list[dict]], path: Path, caption: str) -> Path:
    """server.py: seconds of audio per second and time to first audio against concurrent clients, for the
    batched and the one-at-a-time server."""
    fig, (audio, ttfa) = _figure(2)
    for (name, rows), color in zip(results.items(), (OURS, PORT)):
        clients = [r["clients"] for r in rows]
        audio.plot(clients, [r["audio_s_per_s"] for r in rows], marker="o", color=color, label=name)
        ttfa.plot(clients, [r["ttfa_p50_s"] for r in rows], marker="o", color=color, label=f"{name} p50")
        ttfa.plot(clients, [r["ttfa_p95_s"] for r in rows], marker="x", linestyle="--", color=color,
                  label=f"{name} p95")
    for ax in (audio, ttfa):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    audio.set_ylabel("seconds of audio per second")
    audio.set_ylim(bottom=0)
    audio.set_title("throughput", fontsize=10)
    ttfa.set_ylabel("seconds")
    ttfa.set_title("time to first audio", fontsize=10)
    return _save(fig, path, "Server: continuous batching against one request at a time", caption)
