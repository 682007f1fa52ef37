"""Fine-tuning (extra ``[train]``): LoRA adapters that make a voice or a style the model's own.

data.py       clips + transcripts (folder, LJSpeech metadata.csv, JSONL) -> checked, encoded once
samples.py    samples laid out as inference prompts, labels (target / all policies), batches
objective.py  the transformers port's loss on our model
adapter.py    LoRA presets and injection (peft), adapter files in PEFT's format under the port's names
trainer.py    the loop: AdamW, warm-up + cosine, packed micro-batches, DDP, checkpoints, resume
merge.py      base + adapter -> full checkpoint in the base's on-disk format
cli.py        ``higgs-audio finetune`` and ``python -m higgs_audio.train`` (what torchrun runs)
"""
