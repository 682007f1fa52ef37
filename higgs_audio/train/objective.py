"""The training loss: the transformers port's ``HiggsAudioV2ForConditionalGeneration`` loss, computed on our model.

The port sums, over codebooks, the mean cross-entropy of each codebook's labels shifted by one position, and adds
the mean text cross-entropy (``ForCausalLMLoss``). A mean over one batch is not additive over micro-batches or
processes, so ``Objective`` returns the sums and ``loss`` divides by counts taken over the whole optimizer step:
the loss (and gradient) of a step equal the port's on the step's whole batch, however it is split.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from higgs_audio.model.higgs import HiggsAudioModel
from higgs_audio.train.samples import IGNORE, Batch


def label_counts(batch: Batch) -> torch.Tensor:
    """(K + 1,) number of predicted labels per codebook, then text (the label at position 0 is never predicted)."""
    audio = (batch.audio_labels[:, 1:] != IGNORE).sum((0, 1))
    text = (batch.text_labels[:, 1:] != IGNORE).sum()
    return torch.cat([audio, text[None]]).float()


def loss(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum over codebooks and text of each one's mean cross-entropy (a part with no labels adds nothing)."""
    return (sums / counts.clamp(min=1)).sum()


class Objective(nn.Module):
    """Cross-entropy sums of a batch, (K + 1,): per codebook, then text. The module DDP wraps."""

    def __init__(self, model: HiggsAudioModel):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        m = self.model
        b, n = batch.ids.shape
        positions = torch.arange(n, device=batch.ids.device).expand(b, n)
        x = m.embed(batch.ids, batch.codes, batch.audio)
        h = m(x, batch.audio, positions, None, n)[:, :-1]  # position t predicts the labels of t + 1
        audio_targets, text_targets = batch.audio_labels[:, 1:], batch.text_labels[:, 1:]
        rows = (audio_targets != IGNORE).any(-1)
        logits = m.audio_logits(h[rows])  # only rows with a label: the head is large
        targets = audio_targets[rows]
        audio = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
        audio = audio.view(targets.shape).sum(0)
        has_text = text_targets != IGNORE
        if bool(has_text.any()):
            text = F.cross_entropy(m.text_logits(h[has_text]), text_targets[has_text], reduction="sum")
        else:
            text = audio.new_zeros(())
        return torch.cat([audio, text[None]])


def checkpoint_layers(model: HiggsAudioModel) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (gradient checkpointing)."""
    for layer in model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
