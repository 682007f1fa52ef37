"""``AudioCodec``: audio -> 8 x 25 Hz codes -> 24 kHz audio, equal to the official Higgs Audio V2 tokenizer.

Encoding (spec section 8.2): mono mix-down, optional loudness normalisation at the input rate, soxr resampling
to 24 kHz, then two branches over the same clip:
- semantic: windowed-sinc resampling to 16 kHz, 160 zero samples each side, HuBERT (mean of all hidden
  states), every 2nd frame, a conv encoder;
- acoustic: the DAC encoder; when its frame count differs from the semantic one the clip is re-encoded with
  320 zero samples each side (the official rule; the transformers port pads 480 instead).
Both are concatenated, projected and residual-vector-quantised. Decoding sums the code vectors, projects them
and runs the DAC decoder: exactly ``hop_length`` (960) samples per frame.

Clips shorter than one frame (960 samples at 24 kHz) are zero-padded at the end to one frame, so they give
one frame of codes; the reference would fail inside HuBERT's convolutions instead. Empty clips are refused.

The decoder is non-causal. Its receptive field, derived from the layers (``AcousticDecoder.context_frames``),
is 10 frames on each side for the official sizes: the input conv (kernel 7) reaches 3 frames, the first
transposed conv about 1, and each block's residual units (kernel 7, dilations 1, 3, 9: 39 samples each side
at 200, 1000, 4000, 8000, 24000 Hz) 6.3 together; about 10.3 frames, and exactly 10 whole frames once
aligned to frame boundaries. So a streamed frame is final after 10 more frames (0.4 s) have arrived.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from higgs_audio import audio
from higgs_audio.codec import weights
from higgs_audio.codec.acoustic import AcousticDecoder, AcousticEncoder
from higgs_audio.codec.config import CodecConfig
from higgs_audio.codec.quantizer import ResidualVQ
from higgs_audio.codec.resample import resample
from higgs_audio.codec.semantic import Hubert, SemanticEncoder
from higgs_audio.codec.streaming import acoustic_encoder_in_chunks, batch_key, step_together, streaming_decoder
from higgs_audio.config import DEFAULT_CODEC
from higgs_audio.errors import AudioInputError
from higgs_audio.files import resolve


class CodecModel(nn.Module):
    """The network; submodule names equal the transformers port's, so its checkpoints load by identity."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.acoustic_encoder = AcousticEncoder(cfg.encoder_dim, cfg.encoder_ratios, cfg.latent_dim)
        self.acoustic_decoder = AcousticDecoder(cfg.latent_dim, cfg.decoder_dim, cfg.decoder_ratios)
        self.encoder_semantic = SemanticEncoder(cfg)
        self.semantic_model = Hubert(cfg.hubert)
        self.fc = nn.Linear(cfg.quantizer_dim, cfg.quantizer_dim)
        self.fc2 = nn.Linear(cfg.quantizer_dim, cfg.latent_dim)
        self.quantizer = ResidualVQ(cfg.quantizer_dim, cfg.num_codebooks, cfg.codebook_size, cfg.codebook_dim)

    def encode(self, wave: torch.Tensor, chunk_seconds: float | None = None) -> torch.Tensor:
        """(B, 1, T) at ``cfg.sample_rate`` -> codes (B, num_codebooks, frames).

        With ``chunk_seconds``, a longer clip runs through the two conv stacks at the audio rates (the
        acoustic encoder and HuBERT's feature extractor, where nearly all the memory goes) that much audio at
        a time, so their activations stay bounded; the sums are the same, only float rounding may differ.
        """
        cfg = self.cfg
        factor, half_hop = cfg.semantic_downsample_factor, cfg.semantic_hop // 2
        chunk = None if chunk_seconds is None else max(1, round(chunk_seconds * cfg.sample_rate))
        semantic_chunk = None if chunk is None else max(1, chunk * cfg.semantic_sample_rate // cfg.sample_rate)
        # The fixed-kernel resampler runs in float32 whatever the model dtype, like the reference.
        semantic = resample(wave[:, 0].float(), cfg.sample_rate, cfg.semantic_sample_rate).to(wave.dtype)
        features = self.semantic_model(F.pad(semantic, (half_hop, half_hop)), semantic_chunk)[:, ::factor]
        e_semantic = self.encoder_semantic(features.transpose(1, 2))
        frames = e_semantic.shape[-1]
        if self.acoustic_encoder.output_length(wave.shape[-1]) != frames:
            pad = half_hop * factor
            wave = F.pad(wave, (pad, pad))
        if chunk is not None and wave.shape[-1] > chunk:
            e_acoustic = acoustic_encoder_in_chunks(self.acoustic_encoder, wave, chunk)
        else:
            e_acoustic = self.acoustic_encoder(wave)
        frames = min(frames, e_acoustic.shape[-1])
        joint = torch.cat([e_acoustic[..., :frames], e_semantic[..., :frames]], dim=1)
        return self.quantizer.encode(self.fc(joint.transpose(1, 2)))

    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, num_codebooks, frames) -> the acoustic decoder's input (B, latent_dim, frames)."""
        return self.fc2(self.quantizer.decode(codes)).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, num_codebooks, frames) -> (B, frames * hop_length)."""
        return self.acoustic_decoder(self.latent(codes))[:, 0]


class AudioCodec:
    """Load with :meth:`from_pretrained`; see the module docstring for what encode and decode do."""

    def __init__(self, model: CodecModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.eval().requires_grad_(False)
        self.config = cfg = model.cfg
        self.device, self.dtype = device, dtype
        # the config's facts that callers ask the codec for
        self.sample_rate, self.frame_rate, self.hop_length = cfg.sample_rate, cfg.frame_rate, cfg.hop_length
        self.num_codebooks, self.codebook_size = cfg.num_codebooks, cfg.codebook_size
        self.chunk_seconds: float | None = 5.0
        """Clips longer than this run through the encoder's audio-rate conv stacks this much at a time (same
        codes; the activations of a full-size codec take about 50 MB per second of audio at once); None: whole."""
        self.segment_seconds: float = 300.0
        """Clips longer than this are encoded as consecutive segments of at most this length, each on its own,
        so memory stays bounded however long the clip (HuBERT's attention spans one segment; codes of a
        clip this long or shorter are those of the whole clip)."""
        context, lookahead = model.acoustic_decoder.context_frames()
        self.decoder_context_frames: int = context
        """Frames before a frame that its decoded samples depend on (left receptive field)."""
        self.decoder_lookahead_frames: int = lookahead
        """Frames after a frame that its decoded samples depend on: a streamed frame is final only once this
        many later frames have arrived (or the stream is flushed)."""
        # On a GPU the codec's kernels queue on a CUDA stream of their own: a server's streaming decode (worker
        # threads) then runs beside the model's decode steps, which queue on the default stream, instead of
        # between them. Each call ends by copying its result to the host, which waits for its stream's work.
        self._cuda_stream = None
        if device.type == "cuda":
            self._cuda_stream = torch.cuda.Stream(device)
            self._cuda_stream.wait_stream(torch.cuda.current_stream(device))  # the weights' copies to the GPU

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Inference mode, on the codec's CUDA stream where it has one (see ``__init__``): every copy to the
        device, kernel and copy back of a codec call runs inside."""
        with torch.inference_mode(), torch.cuda.stream(self._cuda_stream):
            yield

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_CODEC,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> AudioCodec:
        """Load either checkpoint format from a local directory or a hub id (no remote code, tensors only).

        bf16 saves memory, but its codes depend on the CPU's bf16 convolution kernels (README): the library
        always loads the codec in float32, and reference clips should be encoded in float32.
        """
        directory = resolve(name_or_path)
        cfg, weights_path = weights.read_config(directory)
        with torch.device("meta"):
            model = CodecModel(cfg)
        tensors = weights.read_tensors(weights_path)
        original = weights_path.name == weights.ORIGINAL_WEIGHTS
        tensors, origin = weights.to_model_names(tensors, cfg, weights_path, original=original)
        tensors = weights.check_and_select(tensors, origin, model.state_dict(), weights_path)
        device = torch.device(device)
        state = {k: v.to(device=device, dtype=torch.float32, copy=True) for k, v in tensors.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return cls(model.to(dtype=dtype), device, dtype)

    def num_frames(self, num_samples: int) -> int:
        """Frames ``encode`` returns for a clip of ``num_samples`` samples at the codec rate."""
        length = max(num_samples, self.hop_length)
        cfg = self.config
        semantic = -(-length * cfg.semantic_sample_rate // cfg.sample_rate) + 2 * (cfg.semantic_hop // 2)
        frames = -(-self.model.semantic_model.output_length(semantic) // cfg.semantic_downsample_factor)
        acoustic = self.model.acoustic_encoder.output_length(length)
        if acoustic != frames:
            pad = cfg.semantic_hop // 2 * cfg.semantic_downsample_factor
            acoustic = self.model.acoustic_encoder.output_length(length + 2 * pad)
        return min(frames, acoustic)

    def _prepare(self, wave: np.ndarray, sample_rate: int, loudness_normalize: bool, loudness_target: float
                 ) -> np.ndarray:
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise AudioInputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        wave = audio.to_mono(audio.check_wave(wave))
        if loudness_normalize:
            wave = audio.normalize_loudness(wave, int(sample_rate), loudness_target)
        wave = audio.resample(wave, int(sample_rate), self.sample_rate)
        if wave.shape[-1] < self.hop_length:
            wave = np.pad(wave, (0, self.hop_length - wave.shape[-1]))
        return wave

    def encode(
        self,
        wave: np.ndarray | torch.Tensor,
        sample_rate: int,
        *,
        loudness_normalize: bool = False,
        loudness_target: float = -23.0,
    ) -> torch.Tensor:
        """Codes (num_codebooks, frames) as a CPU LongTensor for one clip, shaped (samples,) or
        (channels, samples), at any rate; ``frames`` is ``num_frames`` of the clip resampled to 24 kHz."""
        return self.encode_batch([wave], sample_rate, loudness_normalize=loudness_normalize,
                                 loudness_target=loudness_target)[0]

    def encode_batch(
        self,
        waves: Sequence[np.ndarray | torch.Tensor],
        sample_rate: int | Sequence[int],
        *,
        loudness_normalize: bool = False,
        loudness_target: float = -23.0,
        max_batch: int = 16,
    ) -> list[torch.Tensor]:
        """``encode`` for several clips. Clips of equal length run as one batch, giving the same codes as
        one at a time (each clip's padding rule depends on its own length, so unequal ones are not mixed)."""
        rates = list(sample_rate) if isinstance(sample_rate, Sequence) else [sample_rate] * len(waves)
        if len(rates) != len(waves):
            raise ValueError(f"{len(waves)} clips but {len(rates)} sample rates")
        prepared = [self._prepare(w, r, loudness_normalize, loudness_target) for w, r in zip(waves, rates, strict=True)]
        pieces = [(i, segment) for i, w in enumerate(prepared) for segment in self._segments(w)]
        by_length: dict[int, list[int]] = {}
        for p, (_, w) in enumerate(pieces):
            by_length.setdefault(w.shape[-1], []).append(p)
        out: list[torch.Tensor] = [torch.empty(0)] * len(pieces)
        with self.running():
            for indices in by_length.values():
                for start in range(0, len(indices), max_batch):
                    group = indices[start : start + max_batch]
                    batch = torch.from_numpy(np.stack([pieces[p][1] for p in group]))[:, None]
                    codes = self.model.encode(batch.to(self.device, self.dtype), self.chunk_seconds).cpu()
                    for p, c in zip(group, codes, strict=True):
                        out[p] = c
        return [torch.cat([out[p] for p, (i, _) in enumerate(pieces) if i == clip], dim=-1)
                for clip in range(len(prepared))]

    def _segments(self, wave: np.ndarray) -> list[np.ndarray]:
        """``wave`` cut into equal whole-frame segments of at most ``segment_seconds`` (the last one shorter)."""
        if wave.shape[-1] <= self.segment_seconds * self.sample_rate:
            return [wave]
        longest = max(self.hop_length, int(self.segment_seconds * self.sample_rate) // self.hop_length * self.hop_length)
        count = -(-wave.shape[-1] // longest)
        length = -(-wave.shape[-1] // (count * self.hop_length)) * self.hop_length
        return [wave[i : i + length] for i in range(0, wave.shape[-1], length)]

    def _check_codes(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.dim() not in (2, 3) or codes.shape[-2] != self.num_codebooks:
            raise ValueError(
                f"codes must be shaped ({self.num_codebooks}, frames) or (batch, {self.num_codebooks}, frames), "
                f"got {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}); got values in [{int(codes.min())}, {int(codes.max())}]"
                " (strip stream bos/eos and revert the delay pattern before decoding)"
            )
        return codes.long()

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 mono 24 kHz samples, exactly ``hop_length`` per frame: (frames * hop,) for codes
        (num_codebooks, frames), (batch, frames * hop) for codes (batch, num_codebooks, frames)."""
        codes = self._check_codes(codes)
        batch = codes if codes.dim() == 3 else codes[None]
        if batch.shape[-1] == 0:
            wave = np.zeros((batch.shape[0], 0), dtype=np.float32)
        else:
            with self.running():
                wave = self.model.decode(batch.to(self.device)).float().cpu().numpy()
        return wave if codes.dim() == 3 else wave[0]

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Decode codes that arrive a few frames at a time; the concatenated output equals ``decode`` of all codes.

    The decoder is non-causal: an output frame depends on ``decoder_lookahead_frames`` later frames (and
    ``decoder_context_frames`` earlier ones). Each layer keeps the few input samples it still needs, so no
    work is repeated (see ``streaming.py``). ``push`` returns every whole frame that is final, so after n
    frames in, n - lookahead frames have come out; ``flush`` returns the rest.
    """

    def __init__(self, codec: AudioCodec) -> None:
        self.codec = codec
        self._reset()

    def _reset(self) -> None:
        with self.codec.running():
            self._state = streaming_decoder(self.codec.model.acoustic_decoder)
        self._held = np.zeros(0, dtype=np.float32)  # final samples short of a whole frame

    def push(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Add codes (num_codebooks, n); return the samples now final, a whole number of frames."""
        return StreamDecoder.push_many([self], [codes])[0]

    @staticmethod
    def push_many(decoders: Sequence[StreamDecoder], codes: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """``push`` for several streams of one codec at once: ``codes[i]`` to ``decoders[i]``. Streams whose
        states can step as one batch (past their first chunk, fed chunks of one length) are decoded in one
        pass of the layers, the others one by one; each gets what its own ``push`` would return (up to float
        rounding: batched convolutions may sum in another order)."""
        if not decoders:
            return []
        if len({d.codec for d in decoders}) > 1:
            raise ValueError("push_many takes stream decoders of one codec")
        chunks = [d.codec._check_codes(c) for d, c in zip(decoders, codes, strict=True)]
        if any(c.dim() != 2 for c in chunks):
            raise ValueError("a stream decoder takes one stream: codes shaped (num_codebooks, frames)")
        groups: dict[tuple, list[int]] = {}
        for i, (d, c) in enumerate(zip(decoders, chunks)):
            if c.shape[1]:
                key = batch_key(d._state)
                groups.setdefault((i,) if key is None else (c.shape[1], key), []).append(i)
        out = [np.zeros(0, dtype=np.float32)] * len(decoders)
        codec = decoders[0].codec
        with codec.running():
            for members in groups.values():
                latent = codec.model.latent(torch.stack([chunks[i] for i in members]).to(codec.device))
                states = [decoders[i]._state for i in members]
                samples = step_together(states, latent) if len(states) > 1 else states[0].step(latent)
                for i, row in zip(members, samples[:, 0].float().cpu().numpy()):
                    out[i] = row
        return [d._whole_frames(samples) for d, samples in zip(decoders, out)]

    def _whole_frames(self, samples: np.ndarray) -> np.ndarray:
        """Hold back the samples short of a whole frame; return the rest."""
        self._held = np.concatenate([self._held, samples])
        whole = len(self._held) // self.codec.hop_length * self.codec.hop_length
        out, self._held = self._held[:whole], self._held[whole:]
        return out

    def flush(self) -> np.ndarray:
        """Return the remaining samples (the stream has ended) and reset for a new stream."""
        with self.codec.running():
            rest = self._state.flush()
            rest = None if rest is None else rest[0, 0].float().cpu().numpy()
        out = self._held if rest is None else np.concatenate([self._held, rest])
        self._reset()
        return out
