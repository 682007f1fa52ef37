"""Build the Higgs Audio V2 text tokenizer offline from the real Llama-3 BPE file.

The `llama-models` wheel ships Llama-3's ``tokenizer.model`` (128,000 ranks); transformers' tiktoken
converter turns it into a ``tokenizer.json``. The 256 special slots get the names of the released
Higgs checkpoint (spec §3.3b), so ids match the real model exactly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

NUM_BASE_TOKENS = 128_000
NUM_SPECIAL = 256

_NAMED_SPECIALS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>",
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
    128011: "<|audio_bos|>",
    128012: "<|audio_eos|>",
    128013: "<|audio_out_bos|>",
    128014: "<|reserved_special_token_6|>",
    128015: "<|AUDIO|>",
    128016: "<|AUDIO_OUT|>",
    128017: "<|recipient|>",
    128018: "<|scene_desc_start|>",
    128019: "<|scene_desc_end|>",
    128020: "<|generation_instruction_start|>",
    128021: "<|generation_instruction_end|>",
    128022: "<SE>",
    128023: "</SE>",
    128024: "<SE_s>",
    128025: "</SE_s>",
    128026: "<SE_e>",
    128027: "</SE_e>",
}


def special_token_names() -> list[str]:
    """Names of ids 128000..128255 in id order."""
    return [
        _NAMED_SPECIALS.get(i, f"<|reserved_special_token_{i - 128008}|>")
        for i in range(NUM_BASE_TOKENS, NUM_BASE_TOKENS + NUM_SPECIAL)
    ]


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "higgs-audio-test-tokenizer-v1"


def _build(target: Path) -> None:
    import llama_models
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    bpe_file = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    tok = TikTokenConverter(vocab_file=str(bpe_file)).converted()
    # Add the specials explicitly, in id order (passing them to the converter is ignored by transformers 5.24).
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in special_token_names()])
    target.mkdir(parents=True, exist_ok=True)
    tok.save(str(target / "tokenizer.json"))


def write_text_tokenizer(directory: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``directory``."""
    cache = _cache_dir()
    if not (cache / "tokenizer.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix="tok-", dir=tempfile.gettempdir()))
        _build(staging)
        staging.replace(cache) if not cache.exists() else shutil.rmtree(staging)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache / "tokenizer.json", directory / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "model_max_length": 131072,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
