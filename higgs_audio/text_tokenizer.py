"""The checkpoint's text tokenizer (Hugging Face ``tokenizer.json``), read with the `tokenizers` library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from higgs_audio.errors import CheckpointError


class TextTokenizer:
    """Text <-> token ids. Special tokens written in the text (e.g. ``<|eot_id|>``) become their single ids."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the model checkpoint must ship its text tokenizer")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on malformed files
            raise CheckpointError(f"{path} is not a valid tokenizer file: {e}") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        """The id of a single (special) token, by its string."""
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise CheckpointError(f"the text tokenizer has no token {token!r}; is this a Higgs Audio checkpoint?")
        return idx

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of the special tokens that the prompt template (spec §3.2) and the engine use, from the tokenizer."""

    begin_of_text: int
    start_header: int
    end_header: int
    eot: int
    eom: int
    end_of_text: int
    recipient: int
    audio_bos: int
    audio_eos: int
    audio_out_bos: int
    audio_in: int  # <|AUDIO|>: the placeholder of a user or system clip
    audio_out: int  # <|AUDIO_OUT|>: of an assistant clip, and the text input of each audio decode step

    @property
    def stops(self) -> frozenset[int]:
        """Text tokens that end a generation."""
        return frozenset({self.eot, self.end_of_text})

    @classmethod
    def of(cls, tok) -> SpecialTokens:
        """From ``tok``: anything with ``token_id(string)``, as ``TextTokenizer``."""
        return cls(**{name: tok.token_id(token) for name, token in _SPECIAL_TOKENS.items()})


_SPECIAL_TOKENS = {
    "begin_of_text": "<|begin_of_text|>", "start_header": "<|start_header_id|>", "end_header": "<|end_header_id|>",
    "eot": "<|eot_id|>", "eom": "<|eom_id|>", "end_of_text": "<|end_of_text|>", "recipient": "<|recipient|>",
    "audio_bos": "<|audio_bos|>", "audio_eos": "<|audio_eos|>", "audio_out_bos": "<|audio_out_bos|>",
    "audio_in": "<|AUDIO|>", "audio_out": "<|AUDIO_OUT|>",
}
