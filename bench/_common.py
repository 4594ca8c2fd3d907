"""Shared benchmark utilities: median timing with CUDA events, device facts, and results JSON."""
from __future__ import annotations

import datetime
import json
import os
import statistics
from typing import Callable, Iterable, List

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_ms(fn: Callable[[], object], warmup: int = 5, iters: int = 30, flush_l2: bool = True,
            sync_each: bool = True, spin_cycles: int = 0) -> float:
    """Median milliseconds of fn() timed with CUDA events, after warm-up; the L2 cache is flushed before each
    timed call (a 256 MB write) so small problems are not measured out of the cache.

    sync_each=True waits for each call before queueing the next, so the host time until fn's first kernel is
    launched is inside every sample (the GPU idles while the host catches up). sync_each=False queues all calls
    back to back and synchronizes once at the end, like triton.testing.do_bench and like a training loop, where
    the host runs ahead of the GPU: a sample then holds host time only where the host cannot keep up.
    spin_cycles > 0 (with sync_each) queues a spin kernel of that many clock cycles (10_000_000: ~5 ms) before each
    start event, so the host has issued all of fn's kernels before the GPU gets to them: GPU time alone, however
    slow or busy the host is."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()
        if spin_cycles > 0:
            torch.cuda._sleep(spin_cycles)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        if sync_each:
            end.synchronize()
        events.append((start, end))
    torch.cuda.synchronize()
    times: List[float] = [s.elapsed_time(e) for s, e in events]
    return statistics.median(times)


def rows_for(cols: int, elements: int = 1 << 27, multiple: int = 256) -> int:
    """Rows of a [rows, cols] benchmark tensor: at least `elements` elements, a multiple of `multiple` rows."""
    return max(multiple, -(-elements // cols // multiple) * multiple)


def warm_up_gpu(seconds: float = 0.3) -> None:
    """Copies 256 MB back to back for about `seconds`, so the first size a benchmark times does not run on a GPU that
    is still raising its clocks from idle (seen on H100: the first size of a fresh process 10 % slow)."""
    import time
    x = torch.empty(128 * 1024 * 1024, dtype=torch.bfloat16, device="cuda")
    t_end = time.time() + seconds
    while time.time() < t_end:
        for _ in range(20):
            x.clone()
        torch.cuda.synchronize()


def device_facts() -> dict:
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def write_results(name: str, rows: List[dict], merge_key: Iterable[str] = (), extra: dict | None = None) -> str:
    """Writes bench/results/<name>.json as {"device","torch","date",...,"rows"}; with merge_key, rows of an existing
    file whose key differs from every new row's key are kept (e.g. other dtypes from an earlier run)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    merge_key = tuple(merge_key)
    facts = device_facts()
    rows = [{**r, "date": r.get("date", facts["date"])} for r in rows]  # every row says when it was measured
    if merge_key and os.path.exists(path):
        with open(path) as f:
            old_doc = json.load(f)
        old = [{**r, "date": r.get("date", old_doc.get("date"))} for r in old_doc.get("rows", [])]
        new_keys = {tuple(r.get(k) for k in merge_key) for r in rows}
        rows = [r for r in old if tuple(r.get(k) for k in merge_key) not in new_keys] + rows
    return write_doc(path, rows, extra)


def write_doc(path: str, rows: List[dict], extra: dict | None = None) -> str:
    """Writes {"device","torch","date",...extra,"rows"} as JSON to path (any path: tools write under $OUT too)."""
    with open(path, "w") as f:
        json.dump({**device_facts(), **(extra or {}), "rows": rows}, f, indent=1)
    return path


def print_table(rows: List[dict], cols: List[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(cols, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)
