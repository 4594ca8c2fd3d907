"""Models for halo-finetune: LlamaConfig presets (random init), local HF checkpoints, and the variants
("bf16", "halo<L>-<precision>") with the HALO layer conversion and LoRA."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .data import BYTE_VOCAB, BOS, EOS, PAD, ByteTokenizer, HFTokenizer, UserError

log = logging.getLogger("halo_ext.finetune")

# Every block linear has in/out features that are supported Hadamard sizes (m * 2^p) and multiples of 64, so HALO
# converts all of them; the vocabulary (lm_head, skipped by HALO) is padded to a multiple of 128.
PRESETS: Dict[str, Dict] = {
    # CPU smoke tests: 2 blocks, hidden 64
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
    # ~100M parameters: GPT-2-small width, SwiGLU MLP 2560 (= 20 * 2^7)
    "100m": dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12),
    # ~1B (TinyLlama-1.1B architecture: 2048 hidden, 22 layers, 5632 = 44 * 2^7 MLP, GQA 32/4 heads)
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
}

# Per-preset defaults of the default job (flags override). tokens/step = batch * seq.
PRESET_DEFAULTS: Dict[str, Dict] = {
    "tiny": dict(batch=8, seq=128, steps=60, pretrain_steps=60, lr=1e-3, pretrain_lr=3e-3, eval_every=20,
                 eval_batches=4),
    "100m": dict(batch=16, seq=512, steps=1000, pretrain_steps=200, lr=3e-4, pretrain_lr=1e-3, eval_every=200,
                 eval_batches=16),
    "1b": dict(batch=4, seq=2048, steps=300, pretrain_steps=100, lr=2e-4, pretrain_lr=6e-4, eval_every=100,
               eval_batches=8),
    # --model PATH (a real checkpoint): conservative full fine-tuning defaults (--lora: lr 2e-4)
    "model": dict(batch=4, seq=1024, steps=1000, pretrain_steps=0, lr=2e-5, pretrain_lr=0.0, eval_every=200,
                  eval_batches=16),
}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# halo<level>-<precision>[-pt]; "-pt": E_Y per tensor in the weight-gradient GEMM (HaloLinear's wgrad_scale="tensor",
# the paper's Q) instead of the layer's default (per output channel for int8)
_VARIANT_RE = re.compile(r"^halo([012])-(int8|fp8|bf16)(-pt)?$")


@dataclass(frozen=True)
class Variant:
    name: str
    level: Optional[int]  # None: plain bf16 nn.Linear (the baseline)
    precision: str
    wgrad_scale: Optional[str] = None  # None: HaloLinear's default

    @property
    def is_halo(self) -> bool:
        return self.level is not None


def parse_variant(name: str) -> Variant:
    name = name.strip().lower()
    if name in ("bf16", "baseline"):
        return Variant("bf16", None, "bf16")
    m = _VARIANT_RE.match(name)
    if not m:
        raise UserError(f"bad variant {name!r}: use bf16 or halo<level>-<precision>[-pt] with level 0|1|2 and "
                        "precision int8|fp8|bf16 (e.g. halo2-int8; -pt: per-tensor E_Y in the weight gradient)")
    return Variant(name, int(m.group(1)), m.group(2), "tensor" if m.group(3) else None)


def llama_config(preset: str, vocab_size: int = BYTE_VOCAB, max_positions: int = 4096):
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, rope_theta=10000.0, **PRESETS[preset])


def build_preset(preset: str, seed: int, device, dtype, max_positions: int = 4096) -> nn.Module:
    """Random-init LlamaForCausalLM of a preset, created directly on ``device`` (fast init on the GPU)."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(preset, max_positions=max_positions)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def load_pretrained(path: str, device, dtype) -> Tuple[nn.Module, object]:
    """``--model PATH``: a local HF checkpoint directory (no downloads) and its tokenizer if it has one."""
    if not os.path.isdir(path):
        raise UserError(f"--model: no such directory: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"--model {path}: not a Hugging Face checkpoint (no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except Exception as e:  # noqa: BLE001 - report the loader's reason in one line
        raise UserError(f"--model {path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    tok = None
    try:
        tok = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except Exception:  # noqa: BLE001 - no tokenizer files: byte level
        tok = None
    if tok is None:
        tok = ByteTokenizer()
        if model.get_input_embeddings().num_embeddings < BYTE_VOCAB - 125:
            raise UserError(f"--model {path}: no tokenizer files and the vocabulary is too small for bytes")
    elif len(tok.tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok.tok))
    return model.to(device), tok


def _halo():
    try:
        import halo_ext
    except ImportError as e:  # pragma: no cover
        raise UserError(f"cannot import halo_ext ({e})") from None
    if not hasattr(halo_ext, "convert"):
        raise UserError("this halo_ext has no HALO layer yet (halo_ext.convert is missing): only the bf16 variant "
                        "can run; install a halo_ext with HaloLinear")
    return halo_ext


def halo_available() -> bool:
    try:
        import halo_ext
    except ImportError:
        return False
    return hasattr(halo_ext, "convert")


def _block_linears(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules()
            if type(m) is nn.Linear and not n.endswith("lm_head") and "lora_" not in n]


def unsupported_linears(model: nn.Module, level: int = 2) -> List[str]:
    """Block linears whose dims HALO cannot handle (``halo_ext.linear_supported`` when the layer provides it, else:
    in_features not a Hadamard size, or dims not multiples of 16 for the 8-bit GEMMs)."""
    import halo_ext

    check = getattr(halo_ext, "linear_supported", None)
    bad = []
    for n, m in _block_linears(model):
        if check is not None:
            ok = check(m.in_features, m.out_features, level) is None
        else:
            ok = all(d % 16 == 0 for d in (m.in_features, m.out_features)) and \
                (level == 0 or halo_ext.hadamard_supported(m.in_features))
        if not ok:
            bad.append(f"{n} ({m.in_features}->{m.out_features})")
    return bad


def apply_variant(model: nn.Module, variant: Variant, lora: int = 0) -> Tuple[nn.Module, Dict]:
    """LoRA (if ``lora`` > 0) and the HALO conversion of ``variant``. Returns (model, info)."""
    info: Dict = {"variant": variant.name, "level": variant.level, "precision": variant.precision}
    if lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError("--lora needs the peft package (pip install peft)") from None
        cfg = LoraConfig(r=lora, lora_alpha=2 * lora, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none")
        if variant.is_halo:
            halo = _halo()
            if hasattr(halo, "prepare_peft"):
                model = get_peft_model(model, cfg)
                model = _call_prepare_peft(halo, model, variant) or model
                variant_done = True
            else:
                model = get_peft_model(model, cfg)
                variant_done = False
        else:
            model = get_peft_model(model, cfg)
            variant_done = True
        info["lora_rank"] = lora
        info["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if variant_done:
            info.update(_count_halo(model))
            return model, info
    if variant.is_halo:
        halo = _halo()
        bad = unsupported_linears(model, variant.level)
        if bad:
            msg = f"{len(bad)} linear layer(s) stay bf16 (dims not supported by HALO): " + ", ".join(bad[:6]) + \
                (" ..." if len(bad) > 6 else "")
            log.warning(msg)
            info["unsupported_layers"] = bad
        skip_names = {b.split(" ")[0] for b in bad}

        def skip(name, mod):
            return name in skip_names or "lora_" in name or name.endswith("lm_head")

        kw = {} if variant.wgrad_scale is None else {"wgrad_scale": variant.wgrad_scale}
        out = halo.convert(model, level=variant.level, precision=variant.precision, skip=skip, **kw)
        if isinstance(out, nn.Module):
            model = out
    info.update(_count_halo(model))
    if variant.is_halo and info["halo_layers"] == 0:
        raise UserError(f"variant {variant.name}: no layer was converted to HALO (unsupported dims?)")
    return model, info


def _call_prepare_peft(halo, model, variant):
    import inspect

    params = inspect.signature(halo.prepare_peft).parameters
    kw = {}
    if "level" in params:
        kw["level"] = variant.level
    if "precision" in params:
        kw["precision"] = variant.precision
    return halo.prepare_peft(model, **kw)


def _count_halo(model: nn.Module) -> Dict:
    n_halo = sum(1 for m in model.modules() if type(m).__name__ == "HaloLinear" or
                 (hasattr(m, "level") and hasattr(m, "precision") and hasattr(m, "weight") and
                  not isinstance(m, nn.Embedding)))
    n_lin = len(_block_linears(model))
    return {"halo_layers": n_halo, "plain_linear_layers": n_lin}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
