"""``higgs-audio finetune merge``: a base checkpoint plus an adapter -> a full checkpoint in the base's own on-disk
format (same keys, dtypes and side files: config, tokenizer), which our loader and the transformers port (for a
port-format base) load as they load the base, quantized or not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from higgs_audio.checkpoint import INDEX_FILE, TensorSource, read_json, read_quantization, resolve, safetensors_files
from higgs_audio.config import ModelConfig
from higgs_audio.errors import CheckpointError
from higgs_audio.lora import apply_updates, read_adapter

SHARD_BYTES = 4 << 30


def _file_key(source: TensorSource, name: str) -> str:
    """The key ``name`` is stored under in the base (split frozen/trainable parts are written joined)."""
    parts = source.parts[name]
    key = parts[0][1]
    if len(parts) > 1:
        for infix in (".embedding_frozen.", ".linear_frozen.", ".embedding_trainable.", ".linear_trainable."):
            key = key.replace(infix, ".")
    return key


def merge(model: str | os.PathLike, adapter: str | os.PathLike, output: str | os.PathLike, force: bool = False
          ) -> Path:
    from safetensors.torch import save_file

    base = resolve(model)
    if read_quantization(base):
        raise CheckpointError(f"{base} is quantized: merge the adapter into the original checkpoint, then quantize")
    out = Path(output).expanduser()
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists: pass --force to replace it")
    cfg = ModelConfig.from_dict(read_json(base / "config.json"), base / "config.json")
    updates = read_adapter(adapter)
    source = TensorSource(safetensors_files(base), cfg.source_format)
    state = {name: source.get(name) for name in source.parts}
    apply_updates(state, updates, str(base))

    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for f in base.iterdir():  # config, tokenizer and any other side files, as they are
            if f.is_file() and f.suffix != ".safetensors" and f.name != INDEX_FILE:
                shutil.copyfile(f, staging / f.name)
        shards: list[dict] = [{}]
        size = 0
        for name in sorted(state):
            t = state[name].contiguous()
            if shards[-1] and size + t.nbytes > SHARD_BYTES:
                shards.append({})
                size = 0
            shards[-1][_file_key(source, name)] = t
            size += t.nbytes
        if len(shards) == 1:
            save_file(shards[0], str(staging / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for n, shard in enumerate(shards, 1):
                fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(staging / fname), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.nbytes for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
