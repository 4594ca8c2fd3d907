"""halo-finetune (python -m halo_ext.finetune): the CLI end to end on the tiny preset (CPU), --compare, resume,
--data text/jsonl, one-line user errors, and the determinism of the embedded corpus split and data order.

Runs in-process (main(argv)) so the imports and the corpus are shared; tiny sizes keep the file well under its
90 s CPU budget on 2 cores."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import halo_ext
from halo_ext.finetune import data as D
from halo_ext.finetune.cli import main

HAS_HALO = hasattr(halo_ext, "convert")
SMALL = ["--device", "cpu", "--preset", "tiny", "--batch", "2", "--seq", "32", "--eval-batches", "2",
         "--log-every", "1", "--no-progress"]


def _text(n_paragraphs: int = 200) -> str:
    rng = np.random.default_rng(0)
    words = "the a model layer gradient hadamard rotation quantize token batch loss step eval weight".split()
    return "\n\n".join(" ".join(rng.choice(words, size=30)) for _ in range(n_paragraphs))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "corpus.txt"
    p.write_text(_text())
    return str(p)


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    with open(p, "w") as f:
        for para in _text().split("\n\n"):
            f.write(json.dumps({"text": para, "id": 1}) + "\n")
    return str(p)


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _report(out_dir):
    with open(os.path.join(out_dir, "report.json")) as f:
        return json.load(f)


def test_default_job_end_to_end(tmp_path, capsys):
    """Embedded corpus: pre-training (code) then fine-tuning (docs); report JSON, plot and results file written."""
    out, res = str(tmp_path / "run"), str(tmp_path / "finetune.json")
    rc, stdout, err = _run(SMALL + ["--variants", "bf16", "--steps", "4", "--pretrain-steps", "3", "--eval-every",
                                    "2", "--out", out, "--results", res], capsys)
    assert rc == 0, err
    rep = _report(out)
    assert f"report: {out}/report.json" in stdout and f"plot: {out}/loss.png" in stdout
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    assert rep["corpus"]["finetune"]["source"] == "python-stdlib" and rep["corpus"]["finetune"]["files"] > 100
    assert len(rep["corpus"]["finetune"]["sha256"]) == 64 and rep["corpus"]["pretrain"]["domain"] == "code"
    assert rep["pretrain"]["steps"] == 3 and math.isfinite(rep["pretrain"]["final_eval_loss"])
    (row,) = rep["variants"]
    assert row["variant"] == "bf16" and math.isfinite(row["final_eval_loss"]) and math.isfinite(row["final_train_loss"])
    assert [p[0] for p in row["eval_curve"]] == [0, 2, 4] and len(row["train_curve"]) == 4
    assert rep["environment"]["torch"] == torch.__version__ and rep["config"]["steps"] == 4
    with open(res) as f:
        doc = json.load(f)
    assert doc["rows"][0]["variant"] == "bf16" and "eval_loss_rel_diff_halo2_int8" in doc
    assert "speedup_halo2_int8_vs_bf16" in doc
    # the pre-trained weights are cached in --out: a second run reuses them
    rc, stdout, _ = _run(SMALL + ["--variants", "bf16", "--steps", "1", "--pretrain-steps", "3", "--out", out],
                         capsys)
    assert rc == 0 and "pre-trained weights loaded" in stdout


def test_results_file_keeps_benchmark_speedup(tmp_path, capsys, text_file):
    res = tmp_path / "finetune.json"
    res.write_text(json.dumps({"speedup_halo2_int8_vs_bf16": 1.5, "speedup_source": "bench", "rows": []}))
    rc, _, err = _run(SMALL + ["--variants", "bf16", "--steps", "2", "--pretrain-steps", "0", "--data", text_file,
                               "--out", str(tmp_path / "o"), "--results", str(res)], capsys)
    assert rc == 0, err
    doc = json.loads(res.read_text())
    assert doc["speedup_halo2_int8_vs_bf16"] == 1.5 and doc["speedup_source"] == "bench" and len(doc["rows"]) == 1


@pytest.mark.skipif(not HAS_HALO, reason="halo_ext.convert (the HALO layer, issue 4) is not in this build")
def test_compare_bf16_vs_halo2_int8(tmp_path, capsys, text_file):
    out, res = str(tmp_path / "cmp"), str(tmp_path / "finetune.json")
    rc, stdout, err = _run(SMALL + ["--compare", "--level", "2", "--precision", "int8", "--steps", "8",
                                    "--pretrain-steps", "0", "--data", text_file, "--out", out, "--results", res],
                           capsys)
    assert rc == 0, err
    rep = _report(out)
    names = [r["variant"] for r in rep["variants"]]
    assert names == ["bf16", "halo2-int8"]
    halo = rep["variants"][1]
    assert halo["halo_layers"] == 14 and halo["plain_linear_layers"] == 0  # 2 blocks x 7 linears, lm_head kept
    # same init, seed and data: after 8 steps int8 HALO-2 tracks the fp32 reference within a few percent
    assert rep["eval_loss_rel_diff"]["halo2-int8"] < 0.03
    with open(res) as f:
        doc = json.load(f)
    assert doc["eval_loss_rel_diff_halo2_int8"] == pytest.approx(rep["eval_loss_rel_diff"]["halo2-int8"])


def test_resume_matches_uninterrupted(tmp_path, capsys, text_file):
    common = SMALL + ["--variants", "bf16", "--steps", "6", "--pretrain-steps", "0", "--data", text_file,
                      "--eval-every", "3"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run(common + ["--out", a], capsys)[0] == 0
    rc, stdout, _ = _run(common + ["--out", b, "--stop-after", "3"], capsys)
    assert rc == 0 and "stopped after step 3" in stdout and os.path.exists(os.path.join(b, "ckpt-bf16.pt"))
    assert _report(b)["complete"] is False
    rc, stdout, _ = _run(common + ["--out", b, "--resume"], capsys)
    assert rc == 0 and "resumed from" in stdout
    ra, rb = _report(a)["variants"][0], _report(b)["variants"][0]
    # CPU fp32 ops are deterministic and the data order depends only on (seed, step): bitwise the same run
    assert ra["train_curve"] == rb["train_curve"]
    assert ra["final_eval_loss"] == rb["final_eval_loss"]


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_data_file(tmp_path, capsys, text_file, jsonl_file, kind):
    path = text_file if kind == "text" else jsonl_file
    out = str(tmp_path / kind)
    rc, _, err = _run(SMALL + ["--variants", "bf16", "--steps", "3", "--pretrain-steps", "0", "--data", path,
                               "--out", out], capsys)
    assert rc == 0, err
    rep = _report(out)
    info = rep["corpus"]["finetune"]
    assert info["format"] == kind and info["source"] == "file" and info["eval_tokens"] > 0
    if kind == "jsonl":
        assert info["documents"] == 200
    assert math.isfinite(rep["variants"][0]["final_eval_loss"])


def test_jsonl_without_text_field(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "hello world, hello world"}\n{"body": "no text"}\n')
    rc, _, err = _run(SMALL + ["--data", str(p), "--variants", "bf16", "--out", str(tmp_path)], capsys)
    assert rc == 2 and 'line 2 has no string field "text"' in err


@pytest.mark.parametrize("argv,msg", [
    (["--variants", "bf16", "--data", "/nonexistent/data.txt"], "--data: no such file"),
    (["--variants", "bf16", "--preset", "huge"], "unknown preset 'huge'"),
    (["--level", "3"], "--level must be 0, 1 or 2"),
    (["--precision", "int4"], "--precision must be int8, fp8 or bf16"),
    (["--variants", "bf16,halo5-int8"], "bad variant 'halo5-int8'"),
    (["--variants", "bf16", "--model", "/nonexistent/ckpt"], "--model: no such directory"),
])
def test_user_errors_one_line(tmp_path, capsys, argv, msg):
    base = ["--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    rc, _, err = _run(base + argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("halo-finetune: error:") and msg in lines[0], err


def test_variant_names():
    from halo_ext.finetune.model import apply_variant, parse_variant

    v = parse_variant("halo2-int8-pt")
    assert (v.level, v.precision, v.wgrad_scale) == (2, "int8", "tensor")
    assert parse_variant("HALO1-fp8").wgrad_scale is None and not parse_variant("bf16").is_halo
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    model, _ = apply_variant(model, v)
    assert model[0].wgrad_scale == "tensor" and model[0].level == 2
    model2, _ = apply_variant(nn.Sequential(nn.Linear(64, 64)), parse_variant("halo2-int8"))
    assert model2[0].wgrad_scale == "channel"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is present")
def test_cuda_without_gpu_subprocess(tmp_path):
    """Through the real entry point (python -m): one line on stderr, exit status 2, no traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(halo_ext.__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "halo_ext.finetune", "--device", "cuda", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "halo-finetune: error: --device cuda: no CUDA GPU is available " \
                               "(torch.cuda.is_available() is False)"


def test_corpus_split_deterministic():
    c1 = D.stdlib_corpora()
    D._STDLIB_CACHE.clear()
    c2 = D.stdlib_corpora()
    for dom in ("code", "docs"):
        assert c1[dom].info["sha256"] == c2[dom].info["sha256"]
        assert np.array_equal(c1[dom].train, c2[dom].train) and np.array_equal(c1[dom].eval, c2[dom].eval)
        assert c1[dom].eval.size > 0 and c1[dom].train.size > 10 * c1[dom].eval.size // 2
    # the split is a pure function of the relative path (not of the file set or order)
    assert D.is_eval_file("json/decoder.py") == D.is_eval_file("json/decoder.py")
    names = [f"pkg/mod{i}.py" for i in range(2000)]
    frac = sum(map(D.is_eval_file, names)) / len(names)
    assert abs(frac - D.EVAL_PERCENT / 100) < 0.03  # binomial sd = 0.0067
    # data order: a function of (seed, step); ranks take disjoint slices of the same global batch
    s = c1["docs"].train
    one = D.BatchSampler(s, 4, 16, seed=3)
    assert torch.equal(one.get(5), D.BatchSampler(s, 4, 16, seed=3).get(5))
    assert not torch.equal(one.get(5), one.get(6))
    world = D.BatchSampler(s, 2, 16, seed=3, rank=0, world=2), D.BatchSampler(s, 2, 16, seed=3, rank=1, world=2)
    g = torch.cat([world[0].get(5), world[1].get(5)])
    assert torch.equal(g, D.BatchSampler(s, 4, 16, seed=3, world=1).get(5)) and g.shape == (4, 17)
    assert torch.equal(D.eval_windows(c1["docs"].eval, 16, 8), D.eval_windows(c2["docs"].eval, 16, 8))


def test_doc_extraction():
    src = 'def f():\n    """Return the answer to everything, computed slowly."""\n    # a comment block that is\n' \
          '    # long enough to be kept as one document\n    return 42  # short\n'
    docs = D.doc_texts(src)
    assert docs == ["Return the answer to everything, computed slowly.",
                    "a comment block that is\nlong enough to be kept as one document"]


def test_local_checkpoint_model(tmp_path, capsys, text_file):
    """--model PATH: a local HF checkpoint without tokenizer files (byte level), no pre-training."""
    from halo_ext.finetune.model import build_preset

    ckpt = tmp_path / "ckpt"
    build_preset("tiny", 1, "cpu", torch.float32).save_pretrained(str(ckpt))
    out = str(tmp_path / "m")
    rc, _, err = _run(SMALL[:2] + SMALL[4:] + ["--model", str(ckpt), "--data", text_file, "--variants", "bf16",
                                              "--steps", "2", "--out", out], capsys)
    assert rc == 0, err
    rep = _report(out)
    assert rep["pretrain"] is None and rep["model"]["type"] == "LlamaForCausalLM"
    assert math.isfinite(rep["variants"][0]["final_eval_loss"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not (HAS_HALO and halo_ext.cuda_available()), reason="needs the HALO layer with CUDA kernels")
def test_cuda_compare_tiny(tmp_path, capsys, text_file):
    """One GPU, bf16 weights + fp32 master weights: every variant trains and tracks bf16 on the tiny preset."""
    out = str(tmp_path / "gpu")
    rc, _, err = _run(["--device", "cuda", "--preset", "tiny", "--batch", "8", "--seq", "128", "--eval-batches", "4",
                       "--no-progress", "--variants", "bf16,halo2-int8,halo0-fp8,halo1-fp8", "--steps", "20",
                       "--pretrain-steps", "20", "--out", out], capsys)
    assert rc == 0, err
    rep = _report(out)
    assert rep["config"]["dtype"] == "bfloat16" and rep["environment"]["device"] != "cpu"
    for r in rep["variants"]:
        assert math.isfinite(r["final_eval_loss"]) and r["tokens_per_s"] > 0 and r["peak_mem_gb"] > 0
        if r["variant"] != "bf16":
            assert r["halo_layers"] == 14 and r["eval_loss_rel_diff"] < 0.03
