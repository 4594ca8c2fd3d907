"""Data for halo-finetune: a byte-level tokenizer, the embedded corpus (the Python standard library's own sources,
present on every machine with Python), user files (text or jsonl), deterministic splits and batch sampling.

Embedded default (no downloads):
  * files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` (site-/dist-packages and __pycache__ excluded),
    sorted by relative path; a file belongs to the held-out split when ``sha1(relpath)`` mod 100 < ``EVAL_PERCENT``
    (so the split depends on the file name only, not on the Python version's file set);
  * pre-training domain "code": the full source of the train files;
  * fine-tuning domain "docs": the natural-language text inside the sources, i.e. docstrings/triple-quoted strings
    and runs of ``#`` comment lines (each as one document), train files for training, held-out files for eval.
Python versions ship different standard libraries, so the corpus fingerprint (files, bytes, sha256) is recorded.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sysconfig
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

EVAL_PERCENT = 10
BOS, EOS, PAD = 256, 257, 258
BYTE_VOCAB = 384  # 256 bytes + specials, padded to a multiple of 128 (GEMM-friendly; lm_head stays bf16 anyway)

_DOC_RE = re.compile(r'(?s)"""(.*?)"""|\'\'\'(.*?)\'\'\'')
_COMMENT_RE = re.compile(r"(?m)^[ \t]*#[^\n]*(?:\n[ \t]*#[^\n]*)*")
_MIN_DOC = 40


class UserError(Exception):
    """An error the user can fix (bad flag, missing file...): reported as one line, exit status 2."""


class ByteTokenizer:
    """UTF-8 bytes are the tokens 0..255; BOS/EOS/PAD are 256/257/258; vocab padded to 384."""

    vocab_size = BYTE_VOCAB
    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    name = "bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", "replace")


class HFTokenizer:
    """Wraps a local transformers tokenizer (``--model PATH`` with tokenizer files)."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = len(tok)
        self.eos_token_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.bos_token_id = tok.bos_token_id
        self.name = type(tok).__name__

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int32)


@dataclass
class Corpus:
    """Token streams: ``train`` and ``eval`` (1-D int32 numpy arrays, documents separated by EOS)."""

    name: str
    train: np.ndarray
    eval: np.ndarray
    info: Dict = field(default_factory=dict)


def stdlib_files() -> List[str]:
    root = sysconfig.get_paths()["stdlib"]
    if not root or not os.path.isdir(root):
        raise UserError(f"the Python standard library sources were not found (sysconfig stdlib = {root!r}); "
                        "pass --data FILE")
    out = []
    for dp, dn, fn in os.walk(root):
        dn[:] = sorted(d for d in dn if d not in ("site-packages", "dist-packages", "__pycache__"))
        out.extend(os.path.join(dp, f) for f in sorted(fn) if f.endswith(".py"))
    out.sort(key=lambda p: os.path.relpath(p, root))
    if not out:
        raise UserError(f"no .py files under the standard library {root!r}; pass --data FILE")
    return out


def is_eval_file(relpath: str) -> bool:
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 100 < EVAL_PERCENT


def doc_texts(source: str) -> List[str]:
    """The natural-language documents of one source file: docstrings/triple-quoted strings and comment blocks."""
    docs = []
    for m in _DOC_RE.finditer(source):
        d = inspect.cleandoc(m.group(1) if m.group(1) is not None else m.group(2))
        if len(d) >= _MIN_DOC:
            docs.append(d)
    for m in _COMMENT_RE.finditer(source):
        d = "\n".join(line.strip().lstrip("#").strip() for line in m.group(0).splitlines())
        if len(d) >= _MIN_DOC and not d.startswith("!"):
            docs.append(d)
    return docs


def _stream(docs: List[np.ndarray], eos: int) -> np.ndarray:
    if not docs:
        return np.zeros(0, dtype=np.int32)
    sep = np.array([eos], dtype=np.int32)
    parts = []
    for d in docs:
        parts.append(d)
        parts.append(sep)
    return np.concatenate(parts)


_STDLIB_CACHE: Dict[str, Dict[str, Corpus]] = {}


def stdlib_corpora(tokenizer=None) -> Dict[str, Corpus]:
    """``{"code": Corpus, "docs": Corpus}`` from the standard library (cached per process)."""
    tok = tokenizer or ByteTokenizer()
    key = getattr(tok, "name", "?")
    if key in _STDLIB_CACHE:
        return _STDLIB_CACHE[key]
    root = sysconfig.get_paths()["stdlib"]
    files = stdlib_files()
    sha = hashlib.sha256()
    nbytes = 0
    code = {"train": [], "eval": []}
    docs = {"train": [], "eval": []}
    n_eval_files = 0
    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        with open(path, "rb") as f:
            raw = f.read()
        sha.update(rel.encode() + b"\0" + raw + b"\0")
        nbytes += len(raw)
        split = "eval" if is_eval_file(rel) else "train"
        n_eval_files += split == "eval"
        text = raw.decode("utf-8", "replace")
        code[split].append(tok.encode(text))
        docs[split].extend(tok.encode(d) for d in doc_texts(text))
    info = {"source": "python-stdlib", "root": root, "python": sysconfig.get_python_version(), "files": len(files),
            "bytes": nbytes, "sha256": sha.hexdigest(), "eval_files": n_eval_files, "eval_percent": EVAL_PERCENT}
    eos = tok.eos_token_id
    out = {}
    for name, parts in (("code", code), ("docs", docs)):
        c = Corpus(f"stdlib-{name}", _stream(parts["train"], eos), _stream(parts["eval"], eos), dict(info))
        c.info.update(domain=name, train_tokens=int(c.train.size), eval_tokens=int(c.eval.size))
        out[name] = c
    _STDLIB_CACHE[key] = out
    return out


def load_file_corpus(path: str, tokenizer, eval_fraction: float = 0.1) -> Corpus:
    """``--data FILE``: jsonl (one JSON object per line with a "text" field) or plain text. Documents are joined
    with EOS; the last ``eval_fraction`` of the token stream is held out for eval."""
    if not os.path.isfile(path):
        raise UserError(f"--data: no such file: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    sha = hashlib.sha256(raw).hexdigest()
    texts: List[str] = []
    is_jsonl = path.endswith((".jsonl", ".ndjson")) or raw.lstrip()[:1] == b"{"
    if is_jsonl:
        for i, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"--data {path}: line {i} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UserError(f"--data {path}: line {i} has no string field \"text\"")
            texts.append(obj["text"])
    else:
        texts = [raw.decode("utf-8", "replace")]
    stream = _stream([tokenizer.encode(t) for t in texts if t], tokenizer.eos_token_id)
    if stream.size < 64:
        raise UserError(f"--data {path}: too little text ({stream.size} tokens)")
    n_eval = max(int(stream.size * eval_fraction), 1)
    c = Corpus(os.path.basename(path), stream[:-n_eval], stream[-n_eval:])
    c.info = {"source": "file", "path": os.path.abspath(path), "format": "jsonl" if is_jsonl else "text",
              "documents": len(texts), "bytes": len(raw), "sha256": sha, "train_tokens": int(c.train.size),
              "eval_tokens": int(c.eval.size), "eval_fraction": eval_fraction}
    return c


class BatchSampler:
    """Random windows of ``seq + 1`` tokens; batch ``step`` depends only on (seed, step), so a resumed run or another
    variant sees exactly the same data order. Under data parallelism rank r takes rows [r*batch, (r+1)*batch) of
    the global batch of ``world * batch`` windows."""

    def __init__(self, stream: np.ndarray, batch: int, seq: int, seed: int, rank: int = 0, world: int = 1):
        if stream.size < seq + 2:
            raise UserError(f"training data too short ({stream.size} tokens) for --seq {seq}")
        self.data = torch.from_numpy(stream.astype(np.int64))
        self.batch, self.seq, self.seed, self.rank, self.world = batch, seq, seed, rank, world

    def get(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, self.data.numel() - self.seq - 1, (self.world * self.batch,), generator=g)
        starts = starts[self.rank * self.batch:(self.rank + 1) * self.batch]
        return torch.stack([self.data[s:s + self.seq + 1] for s in starts.tolist()])


def eval_windows(stream: np.ndarray, seq: int, max_windows: int) -> torch.Tensor:
    """Fixed, evenly spaced eval windows of ``seq + 1`` tokens (the same for every variant)."""
    n = stream.size - seq - 1
    if n < 1:
        raise UserError(f"eval data too short ({stream.size} tokens) for --seq {seq}")
    count = max(1, min(max_windows, stream.size // (seq + 1)))
    starts = np.linspace(0, n, count).astype(np.int64)
    data = torch.from_numpy(stream.astype(np.int64))
    return torch.stack([data[s:s + seq + 1] for s in starts])
