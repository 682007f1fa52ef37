"""Fine-tuning end to end on the tiny checkpoints: learning, adapters in the port, merging, resuming, DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from higgs_audio.checkpoint import load_model
from higgs_audio.cli import main
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.train.data import encode_clips, find_clips
from higgs_audio.train.objective import Objective, label_counts, loss
from higgs_audio.train.samples import IGNORE, build_sample, collate, sample_messages
from tests.helpers.tiny_model import load_port
from tests.train.conftest import TEXTS, finetune_args, read_log

REPO = Path(__file__).resolve().parents[2]


def _teacher_forced(model, batch):
    """Greedy (argmax) audio codes at every labelled position, with the labels they should equal."""
    b, n = batch.ids.shape
    with torch.no_grad():
        h = model(model.embed(batch.ids, batch.codes, batch.audio), batch.audio,
                  torch.arange(n).expand(b, n), None, n)[:, :-1]
        greedy = model.audio_logits(h).argmax(-1)
    targets = batch.audio_labels[:, 1:]
    keep = targets != IGNORE
    return greedy[keep], targets[keep]


@pytest.fixture(scope="module")
def batch(voices, tiny_native, tiny_codec, trained):
    """The training clips as one batch (their codes come from the run's code cache)."""
    from higgs_audio.codec.codec import AudioCodec

    _, cfg, _ = load_model(tiny_native, device="cpu", dtype="float32")
    clips, _ = find_clips(voices)
    codes = encode_clips(clips, AudioCodec.from_pretrained(tiny_codec, device="cpu"), trained.parent / "cache")
    tok = TextTokenizer(tiny_native)
    return collate([build_sample(sample_messages(t, c), tok, cfg) for t, c in zip(TEXTS, codes)])


def test_training_lowers_the_loss_and_moves_greedy_codes_to_the_targets(trained, batch, tiny_native):
    log = read_log(trained)
    assert [r["step"] for r in log] == list(range(1, 51))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    base, _, _ = load_model(tiny_native, device="cpu", dtype="float32")
    tuned, _, _ = load_model(tiny_native, device="cpu", dtype="float32", adapter=trained)
    before, targets = _teacher_forced(base, batch)
    after, _ = _teacher_forced(tuned, batch)
    hits_before, hits_after = (before == targets).float().mean(), (after == targets).float().mean()
    assert hits_after > hits_before + 0.1, (hits_before, hits_after)
    # The adapted model's loss on the training batch is the trained one's, not the base's.
    assert loss(Objective(tuned)(batch), label_counts(batch)) < 0.6 * loss(Objective(base)(batch), label_counts(batch))


def test_adapter_loads_into_the_port_with_peft(trained, batch, tiny_native):
    from peft import PeftModel

    config = json.loads((trained / "adapter_config.json").read_text())
    assert set(config["target_modules"]) >= {"self_attn.q_proj", "audio_mlp.down_proj", "audio_lm_head"}
    port = PeftModel.from_pretrained(load_port(tiny_native), str(trained)).eval()
    ours, _, _ = load_model(tiny_native, device="cpu", dtype="float32", adapter=trained)
    row = 0
    n = int((batch.ids[row] != 0).sum())
    ids, codes, audio = batch.ids[row : row + 1, :n], batch.codes[row : row + 1, :n], batch.audio[row : row + 1, :n]
    with torch.no_grad():
        h = ours(ours.embed(ids, codes, audio), audio, torch.arange(n)[None], None, n)
        mine = ours.audio_head(h)
        port_ids = ids.clone()
        port_ids[audio] = 128016
        theirs = port(input_ids=port_ids, audio_input_ids=codes[audio][None], audio_input_ids_mask=None).logits
    assert (mine - theirs).abs().max() <= 1e-4
    # The adapter really changed the port's logits.
    with port.disable_adapter(), torch.no_grad():
        plain = port(input_ids=port_ids, audio_input_ids=codes[audio][None], audio_input_ids_mask=None).logits
    assert (plain - theirs).abs().max() > 1e-2


def test_merged_checkpoint_equals_the_adapter_applied(trained, tiny_native, tmp_path):
    from peft import PeftModel

    merged = tmp_path / "merged"
    assert main(["finetune", "merge", "--model", str(tiny_native), "--adapter", str(trained), "-o", str(merged),
                 "-q"]) == 0
    assert sorted(p.name for p in merged.iterdir()) == sorted(p.name for p in tiny_native.iterdir())
    a, _, _ = load_model(merged, device="cpu", dtype="float32")
    b, _, _ = load_model(tiny_native, device="cpu", dtype="float32", adapter=trained)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, rtol=0, atol=1e-5), name
    # The port loads the merged checkpoint and computes what peft computes with the adapter on the base.
    ids = torch.tensor([[128000, 9906, 128013, 128016, 128016, 128016]])
    codes = torch.randint(0, 1024, (1, 3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = load_port(merged)(input_ids=ids, audio_input_ids=codes).logits
        peft = PeftModel.from_pretrained(load_port(tiny_native), str(trained)).eval()
        applied = peft(input_ids=ids, audio_input_ids=codes).logits
    assert (direct - applied).abs().max() <= 1e-5
    # A merged checkpoint quantizes at load as the base does.
    quantized, _, _ = load_model(merged, device="cpu", quantize="int8")
    assert type(quantized.layers[0].self_attn.qkv_proj).__name__ == "Int8Linear"
    # An existing output is kept unless --force.
    assert main(["finetune", "merge", "--model", str(tiny_native), "--adapter", str(trained), "-o", str(merged),
                 "-q"]) == 1


def test_resume_continues_the_same_loss_curve(voices, tiny_native, tiny_codec, tmp_path):
    common = (tiny_native, tiny_codec, tmp_path / "cache")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(finetune_args(voices, straight, *common, "--steps", 20)) == 0
    assert main(finetune_args(voices, split, *common, "--steps", 20, "--stop-after", 10)) == 0
    assert [r["step"] for r in read_log(split)] == list(range(1, 11))
    assert (split / "checkpoints" / "step-0000010" / "trainer_state.pt").is_file()
    assert main(finetune_args(voices, split, *common, "--steps", 20, "--resume")) == 0
    a, b = read_log(straight), read_log(split)
    assert [r["step"] for r in b] == list(range(1, 21))
    for x, y in zip(a[10:], b[10:]):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * abs(x["loss"]), (x, y)
    assert a[-1]["loss"] < a[9]["loss"]  # steps 11-20 still learn (not a flat tail)


def test_eval_split_reports_its_loss(voices, tiny_native, tiny_codec, tmp_path):
    out = tmp_path / "out"
    assert main(finetune_args(voices, out, tiny_native, tiny_codec, tmp_path / "cache", "--steps", 2,
                              "--eval-fraction", 0.25, "--eval-every", 1, "--batch-size", 3)) == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["eval_loss"] > 0 for r in log)
    assert log[1]["eval_loss"] != log[0]["eval_loss"]  # measured after each step's update
    args = json.loads((out / "training_args.json").read_text())
    assert args["eval_fraction"] == 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_on_the_same_global_batch(voices, tiny_native, tiny_codec, tmp_path):
    # A small learning rate: Adam's first steps move every weight by about lr whatever its gradient's size, so a
    # gradient summed in another order (two processes) can move a near-zero one differently by up to ~lr * 1e-3.
    common = (tiny_native, tiny_codec, tmp_path / "cache", "--lr", "3e-4")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(finetune_args(voices, one, *common, "--steps", 3, "--warmup", 1)) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGGS_AUDIO_")}
    env.update(PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "higgs_audio.train",
               *finetune_args(voices, two, *common, "--steps", 3, "--warmup", 1)[1:]]
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6, key
    assert any(float(t.abs().max()) > 0 for k, t in a.items() if "lora_B" in k)  # the steps did move B
    assert [r["loss"] for r in read_log(one)] == pytest.approx([r["loss"] for r in read_log(two)], rel=1e-6)


def test_speak_and_the_api_take_the_adapter(trained, tiny_native, tiny_codec, tmp_path):
    from higgs_audio import HiggsAudio

    api = HiggsAudio.from_pretrained(tiny_native, tiny_codec, device="cpu", dtype="float32", adapter=trained,
                                     max_len=256)
    tuned, _, _ = load_model(tiny_native, device="cpu", dtype="float32", adapter=trained)
    assert torch.equal(api.model.audio_head.weight, tuned.audio_head.weight)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGGS_AUDIO_", "HF_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HIGGS_AUDIO_VOICES=str(tmp_path / "voices"),
               HIGGS_AUDIO_CACHE=str(tmp_path / "codes"), OMP_NUM_THREADS="1")
    speak = [sys.executable, "-m", "higgs_audio", "speak", "Hello.", "--model", str(tiny_native), "--codec",
             str(tiny_codec), "--device", "cpu", "--dtype", "float32", "--max-len", "256", "--max-new-tokens", "20",
             "--seed", "1", "-q"]
    proc = subprocess.run([*speak, "-o", str(tmp_path / "a.wav"), "--adapter", str(trained)], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "a.wav").stat().st_size > 44
    proc = subprocess.run([*speak, "-o", str(tmp_path / "b.wav"), "--adapter", str(tmp_path)], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 1
    assert "adapter_config.json is missing" in proc.stderr.decode()
    assert not (tmp_path / "b.wav").exists()
