"""The training loss is the transformers port's, and the default labels sit exactly where inference predicts."""

from __future__ import annotations

import pytest
import torch

from higgs_audio.checkpoint import load_model, read_json
from higgs_audio.config import ModelConfig
from higgs_audio.prompt import VoiceRef
from higgs_audio.text_tokenizer import TextTokenizer
from higgs_audio.train import adapter as lora
from higgs_audio.train.objective import Objective, label_counts, loss
from higgs_audio.train.samples import IGNORE, build_sample, collate, sample_messages
from tests.helpers.tiny_model import load_port

DELAY_ID, AUDIO_OUT_ID, AUDIO_OUT_BOS_ID, PAD_ID, BOS, EOS = 128014, 128016, 128013, 128001, 1024, 1025


def _config(directory) -> ModelConfig:
    return ModelConfig.from_dict(read_json(directory / "config.json"), directory / "config.json")


def _port_key(name: str) -> str:
    """Our LoRA parameter name -> the same parameter's name in the port with peft's layers injected."""
    module, _, rest = name.partition(".lora_")
    return f"{lora.port_name(module)}.lora_{rest}"


def _codes(seed: int, frames: int) -> torch.Tensor:
    return torch.randint(0, 1024, (8, frames), generator=torch.Generator().manual_seed(seed))


def _port_inputs(batch, lengths: list[int], k: int = 8) -> dict:
    """The batch as the port's processor lays it out (the last K - 1 placeholders of a clip are its delay token;
    audio codes in their own tensor) with its ``output_labels=True`` labels, as processing_higgs_audio_v2 makes
    them: text ids minus <|AUDIO_OUT|>, padding and <|audio_out_bos|>; audio codes minus stream bos and eos."""
    ids = batch.ids.clone()
    attention = torch.zeros_like(ids)
    n_audio = batch.audio.sum(1)
    codes = torch.full((len(lengths), int(n_audio.max()), k), EOS)
    mask = torch.zeros(codes.shape[:2], dtype=torch.bool)
    for row, n in enumerate(lengths):
        edges = torch.diff(batch.audio[row].int(), prepend=torch.zeros(1, dtype=torch.int), append=torch.zeros(1, dtype=torch.int))
        for end in torch.nonzero(edges == -1).flatten().tolist():
            ids[row, end - (k - 1) : end] = DELAY_ID
        ids[row, n:] = PAD_ID
        attention[row, :n] = 1
        codes[row, : n_audio[row]] = batch.codes[row][batch.audio[row]]
        mask[row, : n_audio[row]] = True
    labels = ids.clone()
    labels[(labels == AUDIO_OUT_ID) | (labels == PAD_ID) | (labels == AUDIO_OUT_BOS_ID)] = -100
    audio_labels = codes.clone()
    audio_labels[(audio_labels == BOS) | (audio_labels == EOS)] = -100
    return dict(input_ids=ids, attention_mask=attention, audio_input_ids=codes, audio_input_ids_mask=mask,
                labels=labels, audio_labels=audio_labels)


def test_loss_and_gradients_equal_the_port(tiny_native):
    model, cfg, _ = load_model(tiny_native, device="cpu", dtype="float32", fuse=False)  # as the trainer
    tok = TextTokenizer(tiny_native)
    reference = VoiceRef(_codes(1, 5), "Hi.")
    samples = [build_sample(sample_messages("Hello there.", _codes(2, 7), reference=reference, scene="A room."),
                            tok, cfg, "all"),
               build_sample(sample_messages("Bye.", _codes(3, 4)), tok, cfg, "all")]
    batch = collate(samples)

    from peft import inject_adapter_in_model

    config = lora.inject(model, "full-audio-adapter", rank=4, alpha=8)
    torch.manual_seed(5)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave A without gradient
            p.data.normal_(0, 0.05)
    port = load_port(tiny_native)
    port_config = type(config)(r=4, lora_alpha=8, target_modules=[lora.port_name(t) for t in config.target_modules])
    inject_adapter_in_model(port_config, port)
    port_params = dict(port.named_parameters())
    for name, p in model.named_parameters():
        if "lora_" in name:
            port_params[_port_key(name)].data.copy_(p.data)

    ours = loss(Objective(model)(batch), label_counts(batch))
    theirs = port(**_port_inputs(batch, [len(s) for s in samples])).loss
    assert abs(ours.item() - theirs.item()) <= 1e-5 * max(1.0, abs(theirs.item()))
    ours.backward()
    theirs.backward()
    ours_params = dict(model.named_parameters())
    checked = ["layers.0.self_attn.q_proj.lora_A.default.weight", "layers.1.audio_mlp.down_proj.lora_B.default.weight",
               "audio_head.lora_A.default.weight", "audio_head.lora_B.default.weight"]
    for name in checked:
        g_ours, g_port = ours_params[name].grad, port_params[_port_key(name)].grad
        assert g_ours.abs().max() > 0
        assert ((g_ours - g_port).norm() / g_port.norm()).item() <= 1e-5, name


def test_default_labels_sit_on_the_target_clip_only(tiny_original):
    """A cloning prompt: reference clip (2 frames) in context, target clip of 3 frames. Only the target block
    carries audio labels: its codes (not the delay pattern's bos/eos) and codebook 0's stream eos."""
    cfg, tok = _config(tiny_original), TextTokenizer(tiny_original)
    target = torch.arange(24).view(8, 3) + 100  # row r holds 100 + 3r .. 100 + 3r + 2
    sample = build_sample(sample_messages("Go.", target, reference=VoiceRef(_codes(0, 2), "Hi.")), tok, cfg)
    assert (sample.text_labels == IGNORE).all()  # the target turn holds no text
    labelled = (sample.audio_labels != IGNORE).nonzero().tolist()
    blocks = sample.audio.nonzero().flatten().tolist()
    ref_len, target_len = 2 + 8 + 1, 3 + 8 + 1  # frames + K + 1 columns per delayed block
    assert len(blocks) == ref_len + target_len
    start = blocks[ref_len]
    # (column in the target block, codebook): the 3 codes of every row, delayed by the row's index, + eos of row 0.
    expected = sorted([(r + 1 + f, r) for r in range(8) for f in range(3)] + [(4, 0)])
    assert sorted((p - start, k) for p, k in labelled) == expected
    for p, k in labelled:
        col = p - start
        assert sample.audio_labels[p, k] == (EOS if (col, k) == (4, 0) else 100 + 3 * k + col - 1 - k)
    # The block itself is the delay pattern: column 0 all bos, the codes on the diagonal, eos after.
    assert sample.codes[start].tolist() == [BOS] * 8
    assert sample.codes[start + target_len - 1].tolist() == [EOS] * 8
    # Literal masks of the target block (rows = codebooks, columns = positions): 1 = labelled.
    mask = (sample.audio_labels[start : start + target_len] != IGNORE).int().t().tolist()
    assert mask == [
        [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
    ]


def test_all_policy_labels_every_clip_and_text(tiny_original):
    cfg, tok = _config(tiny_original), TextTokenizer(tiny_original)
    sample = build_sample(sample_messages("Go.", _codes(1, 3), reference=VoiceRef(_codes(0, 2), "Hi.")), tok, cfg,
                          "all")
    ref = sample.audio.nonzero().flatten()[:11]
    assert ((sample.audio_labels[ref] != IGNORE).sum() == 2 * 8)  # every reference code, no bos/eos
    text = ~sample.audio
    assert (sample.text_labels[text] == torch.where(sample.ids[text] == AUDIO_OUT_BOS_ID, IGNORE, sample.ids[text])).all()
    with pytest.raises(ValueError, match="label policy"):
        build_sample(sample_messages("Go.", _codes(1, 3)), tok, cfg, "some")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_original):
    from higgs_audio.train.objective import checkpoint_layers

    results = []
    for recompute in (False, True):
        model, cfg, _ = load_model(tiny_original, device="cpu", dtype="float32", fuse=False)
        torch.manual_seed(0)
        lora.inject(model, "style", rank=4)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.05)
        if recompute:
            checkpoint_layers(model)
        batch = collate([build_sample(sample_messages("Hello.", _codes(4, 6)), TextTokenizer(tiny_original), cfg)])
        value = loss(Objective(model)(batch), label_counts(batch))
        value.backward()
        results.append((value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (a, grads_a), (b, grads_b) = results
    assert a == pytest.approx(b, rel=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("text, scene, cloned", [
    ("Hello there, this is a test.", "A quiet room.", True),
    ("[SPEAKER0] Hi, how are you? [SPEAKER1] Fine, thanks.", None, False),
    ("【SPEAKER0】 Not a tag (as the reference reads it), and (brackets) go.", None, False),
])
def test_a_sample_starts_with_the_prompt_inference_builds(tiny_api, text, scene, cloned):
    """Up to the target clip's <|audio_out_bos|>, a sample is the prompt ``HiggsAudio.generate`` prefills for the
    same text, voice and scene (then the engine emits the all-bos column: the block's first column)."""
    from higgs_audio.prompt import build_prompt

    reference = VoiceRef(_codes(0, 4), "The reference line.") if cloned else None
    request = tiny_api.request(text, voice=reference, scene=scene)
    messages = sample_messages(text, _codes(1, 5), reference=reference, scene=scene)
    prompt = build_prompt(messages, tiny_api.tokenizer, add_generation_prompt=False)
    assert prompt.ids[: len(request.ids)] == request.ids
    assert len(prompt.audio) == len(request.audio) + 1
    for ours, theirs in zip(prompt.audio, request.audio):
        assert torch.equal(ours.codes, theirs)
    sample = build_sample(messages, tiny_api.tokenizer, tiny_api.model.cfg)
    start = len(request.ids) + sum(a.codes.shape[1] + 8 for a in prompt.audio[:-1])  # earlier blocks expand
    assert sample.audio[start] and not sample.audio[start - 1]
    assert sample.codes[start].tolist() == [BOS] * 8
