"""halo-finetune: the project's main job. Fine-tunes a causal LM with HALO layers (and compares with bf16) on an
embedded corpus or your data; see ``halo-finetune --help`` and notes/finetune.md."""
from .cli import main

__all__ = ["main"]
