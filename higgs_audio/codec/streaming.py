"""Exact streaming for the acoustic decoder (and the encoders' conv stacks): every layer keeps just the input
tail it still needs.

The decoder's convs are non-causal (zero padding on both sides), so a layer's output sample is final once
the few input samples to its right have arrived. Each conv here keeps that tail as state, computes only the
outputs that are final, and at the end of the stream appends the right zero padding a one-shot run would
use; the left padding is the initial state. So the stream computes the same sums as one run over all the
input, with no recomputation; only float rounding differs (different conv lengths).

Several streams can take a step together (``step_together``): once past their first chunk, streams fed
chunks of one length hold states of equal shapes, which are concatenated along the batch, stepped as one
batch and handed back, so a server decodes all its streams' chunks in one pass of the decoder's layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from higgs_audio.codec.acoustic import AcousticDecoder, AcousticEncoder, DecoderBlock, EncoderBlock, ResidualUnit, Snake


def _empty_like(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], channels, 0)


def _shape(state: torch.Tensor | None) -> tuple | None:
    return None if state is None else tuple(state.shape[1:])


class _Pointwise:
    def __init__(self, fn: nn.Module) -> None:
        self.fn = fn

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def flush(self) -> torch.Tensor | None:
        return None

    def signature(self) -> tuple:
        return ()

    def stacked(self, group: list[_Pointwise]) -> _Pointwise:
        return self

    def unstack(self, group: list[_Pointwise]) -> None:
        pass


class _Conv:
    """Conv with stride s and zero padding p on both sides: an output is final once the ``reach``
    ((k - 1) * d) inputs from its first one have arrived; the next output starts s inputs later."""

    def __init__(self, conv: nn.Conv1d) -> None:
        self.conv = conv
        self.pad, self.stride = conv.padding[0], conv.stride[0]
        self.reach = conv.dilation[0] * (conv.kernel_size[0] - 1)
        if self.reach + 1 < self.stride:
            raise ValueError("streaming needs convs whose kernel spans at least their stride")
        self.tail: torch.Tensor | None = None  # inputs not yet consumed, starting with the left padding

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.tail is None:
            self.tail = x.new_zeros(x.shape[0], x.shape[1], self.pad)
        buf = torch.cat([self.tail, x], dim=-1)
        if buf.shape[-1] <= self.reach:
            self.tail = buf
            return _empty_like(x, self.conv.out_channels)
        outputs = (buf.shape[-1] - self.reach - 1) // self.stride + 1
        self.tail = buf[..., outputs * self.stride :].clone()  # a copy: a view would keep all of buf alive
        used = buf[..., : (outputs - 1) * self.stride + self.reach + 1]
        return F.conv1d(used, self.conv.weight, self.conv.bias, stride=self.stride, dilation=self.conv.dilation)

    def flush(self) -> torch.Tensor | None:
        if self.tail is None:
            return None
        right = self.tail.new_zeros(self.tail.shape[0], self.tail.shape[1], self.pad)
        return self.step(right)

    def signature(self) -> tuple:
        return (_shape(self.tail),)

    def stacked(self, group: list[_Conv]) -> _Conv:
        out = _Conv(self.conv)
        out.tail = torch.cat([g.tail for g in group])
        return out

    def unstack(self, group: list[_Conv]) -> None:
        for g, tail in zip(group, self.tail.split(1)):
            g.tail = tail


class _ConvTranspose:
    """Transposed conv with kernel 2s, stride s: output position m gets inputs floor(m / s) - 1 and floor(m / s).

    So positions before (number of inputs) * s are final, given the previous input sample as context; the
    first ``padding`` positions of the whole stream are cropped, as the one-shot layer does.
    """

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        self.conv = conv
        self.stride, self.pad = conv.stride[0], conv.padding[0]
        if conv.kernel_size[0] != 2 * self.stride or self.pad > self.stride:
            raise ValueError("streaming supports transposed convs with kernel 2 * stride and padding <= stride")
        self.last: torch.Tensor | None = None  # the previous input sample
        self.skip = self.pad  # output samples still to crop at the stream start

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """The uncropped output, (n + 1) * s positions for n inputs, as one matmul and an overlap-add.

        Equal to ``F.conv_transpose1d`` with zero padding, but fast for the few inputs of a stream step,
        where torch falls back to a slow kernel.
        """
        b, cin, n = x.shape
        weight = self.conv.weight  # (in, out, 2s)
        cout, s = weight.shape[1], self.stride
        taps = torch.matmul(x.transpose(1, 2), weight.reshape(cin, -1)).view(b, n, cout, 2, s)
        first, second = (taps[:, :, :, half].permute(0, 2, 1, 3) for half in (0, 1))  # (b, out, n, s)
        full = F.pad(first, (0, 0, 0, 1)) + F.pad(second, (0, 0, 1, 0))  # input i reaches i * s .. i * s + 2s
        return full.reshape(b, cout, (n + 1) * s) + self.conv.bias[:, None]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return _empty_like(x, self.conv.out_channels)
        s = self.stride
        if self.last is None:
            out = self._full(x)[..., : x.shape[-1] * s]
        else:
            out = self._full(torch.cat([self.last, x], dim=-1))[..., s : (x.shape[-1] + 1) * s]
        self.last = x[..., -1:].clone()
        cropped = out[..., self.skip :]
        self.skip = max(0, self.skip - out.shape[-1])
        return cropped

    def flush(self) -> torch.Tensor | None:
        if self.last is None:
            return None
        # After the last input, the one-shot output continues for `padding` positions past inputs * stride.
        return self._full(self.last)[..., self.stride : self.stride + self.pad]

    def signature(self) -> tuple:
        return (_shape(self.last), self.skip)

    def stacked(self, group: list[_ConvTranspose]) -> _ConvTranspose:
        out = _ConvTranspose(self.conv)
        out.last, out.skip = torch.cat([g.last for g in group]), self.skip
        return out

    def unstack(self, group: list[_ConvTranspose]) -> None:
        for g, last in zip(group, self.last.split(1)):
            g.last, g.skip = last, self.skip


class _Sequence:
    def __init__(self, layers: list) -> None:
        self.layers = layers

    def step(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x)
        return x

    def flush(self) -> torch.Tensor | None:
        out: torch.Tensor | None = None
        for layer in self.layers:
            pieces = [] if out is None else [layer.step(out)]
            rest = layer.flush()
            if rest is not None:
                pieces.append(rest)
            out = torch.cat(pieces, dim=-1) if pieces else None
        return out

    def signature(self) -> tuple:
        return tuple(layer.signature() for layer in self.layers)

    def stacked(self, group: list[_Sequence]) -> _Sequence:
        return _Sequence([layer.stacked([g.layers[i] for g in group]) for i, layer in enumerate(self.layers)])

    def unstack(self, group: list[_Sequence]) -> None:
        for i, layer in enumerate(self.layers):
            layer.unstack([g.layers[i] for g in group])


class _Residual:
    """x + branch(x): the skip input waits for the branch, which lags by its conv's padding."""

    def __init__(self, branch: _Sequence) -> None:
        self.branch = branch
        self.waiting: torch.Tensor | None = None

    @staticmethod
    def of(unit: ResidualUnit) -> _Residual:
        return _Residual(_Sequence([_Pointwise(unit.snake1), _Conv(unit.conv1), _Pointwise(unit.snake2),
                                    _Conv(unit.conv2)]))

    def _add(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[-1]
        out = y + self.waiting[..., :n]
        self.waiting = self.waiting[..., n:].clone()
        return out

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.waiting = x if self.waiting is None else torch.cat([self.waiting, x], dim=-1)
        return self._add(self.branch.step(x))

    def flush(self) -> torch.Tensor | None:
        rest = self.branch.flush()
        return None if rest is None else self._add(rest)

    def signature(self) -> tuple:
        return (_shape(self.waiting), self.branch.signature())

    def stacked(self, group: list[_Residual]) -> _Residual:
        out = _Residual(self.branch.stacked([g.branch for g in group]))
        out.waiting = torch.cat([g.waiting for g in group])
        return out

    def unstack(self, group: list[_Residual]) -> None:
        self.branch.unstack([g.branch for g in group])
        for g, waiting in zip(group, self.waiting.split(1)):
            g.waiting = waiting


def _layers(module: nn.Module) -> list:
    if isinstance(module, Snake):
        return [_Pointwise(module)]
    if isinstance(module, nn.Conv1d):
        return [_Conv(module)]
    if isinstance(module, ResidualUnit):
        return [_Residual.of(module)]
    if isinstance(module, DecoderBlock):
        return [_Pointwise(module.snake1), _ConvTranspose(module.conv_t1),
                *(_Residual.of(u) for u in (module.res_unit1, module.res_unit2, module.res_unit3))]
    if isinstance(module, EncoderBlock):
        return [*(_Residual.of(u) for u in (module.res_unit1, module.res_unit2, module.res_unit3)),
                _Pointwise(module.snake1), _Conv(module.conv1)]
    raise TypeError(f"no streaming form for {type(module).__name__}")


def run_in_chunks(state: _Sequence, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``state`` stepped over ``x`` (B, C, T) ``chunk`` samples at a time, then flushed: the one-shot output,
    with only one chunk's activations alive at a time."""
    pieces = [state.step(x[..., i : i + chunk]) for i in range(0, x.shape[-1], chunk)]
    rest = state.flush()
    return torch.cat(pieces if rest is None else [*pieces, rest], dim=-1)


def acoustic_encoder_in_chunks(encoder: AcousticEncoder, wave: torch.Tensor, chunk: int) -> torch.Tensor:
    """``encoder(wave)`` computed ``chunk`` input samples at a time (the same sums; float rounding may differ)."""
    modules = [encoder.conv1, *encoder.block, encoder.snake1, encoder.conv2]
    return run_in_chunks(_Sequence([layer for m in modules for layer in _layers(m)]), wave, chunk)


def features_in_chunks(extractor: nn.Module, wave: torch.Tensor, chunk: int) -> torch.Tensor:
    """HuBERT's conv feature extractor over (B, N) samples, ``chunk`` at a time. Its first layer's group norm
    (one group per channel) normalises over the whole clip, so a first pass gathers each channel's mean and
    variance from that layer's conv alone; the second pass applies them as the one-shot norm would."""
    first, *rest = extractor.conv_layers
    x = wave[:, None]
    total = square = count = 0
    stats = _Sequence([_Conv(first.conv)])
    for i in range(0, x.shape[-1], chunk):
        y = stats.step(x[..., i : i + chunk]).double()
        total, square, count = total + y.sum(-1), square + y.square().sum(-1), count + y.shape[-1]
    mean = total / count
    rstd = (square / count - mean.square()).clamp_min(0).add(first.layer_norm.eps).rsqrt()
    scale = (rstd * first.layer_norm.weight.double()).to(x.dtype)[..., None]
    shift = (first.layer_norm.bias.double() - mean * scale.double()[..., 0]).to(x.dtype)[..., None]
    layers = [_Conv(first.conv), _Pointwise(lambda y: torch.addcmul(shift, y, scale)), _Pointwise(F.gelu)]
    for layer in rest:
        layers += [_Conv(layer.conv), _Pointwise(F.gelu)]
    return run_in_chunks(_Sequence(layers), x, chunk)


def streaming_decoder(decoder: AcousticDecoder) -> _Sequence:
    """Fresh streaming state over ``decoder``'s layers (in its forward order): ``step(latent) -> samples``
    for each chunk of latent frames, then ``flush() -> samples`` once at the end."""
    modules = [decoder.conv1, *decoder.block, decoder.snake1, decoder.conv2]
    return _Sequence([layer for m in modules for layer in _layers(m)])


def batch_key(state: _Sequence) -> tuple | None:
    """Single-stream states with equal keys can step as one batch (``step_together``); None for a state
    that cannot yet (before its first step)."""
    signature = state.signature()
    return signature if _complete(signature) else None


def _complete(signature) -> bool:
    if isinstance(signature, tuple):
        return all(_complete(part) for part in signature)
    return signature is not None


def step_together(states: list[_Sequence], latent: torch.Tensor) -> torch.Tensor:
    """Step streams of one ``batch_key`` together on their chunks ``latent`` (one row per stream); each
    state advances as if stepped alone. Returns the samples, one row per stream."""
    batch = states[0].stacked(states)
    out = batch.step(latent)
    batch.unstack(states)
    return out
