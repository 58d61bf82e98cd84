"""tests/test_soak_short.py: long-run health, in CI-sized portions.

  - bench/soak.py for ~20,000 steps in process (the real Azure trace when shared/ is beside the
    checkout, else a small synthetic trace of the same format): block accounting conserved at every
    check, no request lost, every block free at the end; RSS is recorded (and judged loosely, except
    under a sanitizer whose allocator quarantine grows on purpose). The full run is
    `python bench/soak.py --steps 1000000`.
  - nanobind's leak check: a subprocess that creates and drops every kind of object (tables,
    caches, lists, schedulers of all three backends, executors, views, failed calls) exits with no
    "nanobind: leaked" line on stderr.
  - token views kept alive across pause, completion and removal read back every element (the
    sanitizer build of CI runs this file too).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tllm_sched as ts
from utils import SHARED, toks

ROOT = Path(__file__).resolve().parents[1]
REAL_TRACE = SHARED / "data" / "azure_llm_inference_2023_conv.csv"
UNDER_SANITIZER = "asan" in os.environ.get("LD_PRELOAD", "") or "ASAN_OPTIONS" in os.environ
I32 = lambda *a: np.array(a, dtype=np.int32)  # noqa: E731
E32 = I32()


def _load_soak():
    spec = importlib.util.spec_from_file_location("tllm_bench_soak", ROOT / "bench" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _trace(tmp_path) -> Path:
    if REAL_TRACE.exists():
        return REAL_TRACE
    # Synthetic, same format: lengths cycling through a spread like the conversation trace's.
    rng = np.random.default_rng(7)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(2000):
        lines.append(f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}.000000,"
                     f"{int(rng.integers(10, 4000))},{int(rng.integers(1, 600))}")
    path = tmp_path / "synthetic_azure.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("policy", ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT"])
def test_soak_short(tmp_path, policy):
    soak = _load_soak()
    steps = 5_000 if UNDER_SANITIZER else 20_000
    res = soak.run(steps, _trace(tmp_path), policy=policy, check_every=2_000, warmup_steps=steps // 2,
                   rss_tolerance_mib=None if UNDER_SANITIZER else 16.0)
    print(res.summary())
    assert res.ok, res.summary()
    assert res.steps == steps and res.checks == -(-steps // 2_000) + 1  # step 0, every 2,000, the last
    assert res.requests_finished > 100 and res.requests_added == res.requests_finished + 96
    assert len(res.rss) == res.checks and all(r > 0 for r in res.rss)
    if policy == "MAX_UTILIZATION":
        assert res.requests_paused > 0  # the pause path ran


def test_soak_script_exit_status(tmp_path):
    """The command line: exit 0 and a summary on a clean run, exit 1 on a violation."""
    trace = _trace(tmp_path)
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--trace", str(trace), "--check-every", "500"]
    ok = subprocess.run(cmd + ["--steps", "1000", "--no-rss-check"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "soak: 1000 steps" in ok.stdout and "0 violations" in ok.stdout
    bad = subprocess.run(cmd + ["--steps", "1000", "--rss-tolerance-mib", "-1"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "VIOLATION" in bad.stdout, bad.stdout + bad.stderr


# ============================================================================= nanobind leaks

LEAK_SCRIPT = textwrap.dedent("""
    import gc, sys
    import numpy as np
    import tllm_sched as ts
    from tllm_sched.config import ChunkingConfig, SchedulerConfig
    from tllm_sched.scheduler import BACKENDS, Scheduler

    I32 = lambda *a: np.array(a, dtype=np.int32)
    E32 = I32()
    kept = []  # objects alive at interpreter exit: nanobind must still report no leak

    for round in range(30):
        t = ts.RequestTable(16)
        kv = ts.KVCacheManager(t, 4, 32, 64, enable_block_reuse=round % 2 == 0, num_secondary_blocks=round % 3)
        cross = ts.KVCacheManager(t, 4, 16, 64, cross_kv=True) if round % 5 == 0 else None
        peft = ts.PeftCacheManager(1, 8)
        rl = ts.RequestList(t)
        ex = ts.SimExecutor(t, kv, cross, 100)
        reqs = [t.add_request(i, list(range(i % 7 + 3)), 3, lora_task_id=i % 2 or None, encoder_output_len=4,
                              input_token_extra_ids=[1] * (i % 7 + 3) if i % 4 == 0 else None)
                for i in range(10)]
        for r in reqs:
            rl.append(r)
        views = [r.tokens for r in reqs] + [r.token_buffer for r in reqs] + [rl.slots, rl.slot_buffer]
        cols = t.columns()
        for backend in BACKENDS:
            cfg = SchedulerConfig("MAX_UTILIZATION", 8, max_num_tokens=32,
                                  chunking=ChunkingConfig("EQUAL_PROGRESS", 4))
            sch = Scheduler(cfg, t, kv, cross, peft, backend=backend, count_crossings=round % 2 == 1)
            o = sch.schedule(rl)
            sch.schedule_capacity(np.array(rl.slots))
        step = ts.Scheduler(ts.CapacityScheduler(8, ts.CapacitySchedulerPolicy.GUARANTEED_NO_EVICT),
                                ts.MicroBatchScheduler((ts.ContextChunkingPolicy.FIRST_COME_FIRST_SERVED, 4)),
                                t, kv, cross, peft, 8, 64)
        for _ in range(12):
            fit, disagg, paused, ctx, gen = step.schedule(rl)
            fin = ex.apply(paused, disagg, np.concatenate([ctx, gen]))
            rl.remove_slots(fin)
        for call in (lambda: t.gather(np.zeros(2)), lambda: kv.add_sequence(10**9, 3),
                     lambda: ts.KVCacheManager(t, 0, 1, 1), lambda: ex.apply(I32(99), E32, E32),
                     lambda: reqs[0].add_new_token(2**40), lambda: ts.RequestList(None)):
            try:
                call()
            except (ValueError, TypeError):
                pass
        handles = rl.requests()
        kv.find_new_context_block_batch(np.array(rl.slots))
        for r in list(reqs):
            for m in (kv, cross):
                if m is not None and m.has_sequence(r.request_id):
                    m.remove_sequence(r.request_id, r)
            if r in rl:
                rl.remove(r)
            t.remove_request(r)
        if round % 10 == 0:
            kept.append((t, kv, rl, ex, views, cols, handles, sch, step))
        del t, kv, cross, peft, rl, ex, reqs, views, cols, sch, step, handles, o
        gc.collect()
    print("done", len(kept))
""")


def test_nanobind_reports_no_leaks(tmp_path):
    # Control: the check is live in this build (a deliberately leaked table is reported).
    control = subprocess.run([sys.executable, "-c", "import ctypes, tllm_sched as ts; "
                              "ctypes.pythonapi.Py_IncRef(ctypes.py_object(ts.RequestTable(2)))"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "nanobind: leaked" in control.stderr, control.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", LEAK_SCRIPT], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "done 3"
    leaks = [ln for ln in proc.stderr.splitlines() if "nanobind: leaked" in ln]
    assert not leaks, proc.stderr[-3000:]


# ============================================================================= views


def test_token_views_survive_pause_completion_and_removal():
    """Views taken at every stage of a request's life stay readable, element by element, after the
    request was paused (its tokens truncated), completed, removed and its slot reused."""
    t = ts.RequestTable(4)
    kv = ts.KVCacheManager(t, 4, 8, 64, enable_block_reuse=True)
    ex = ts.SimExecutor(t, kv, None, 6)
    a = t.add_request(1, toks(5, 100), 6, num_draft_tokens=1)
    kept = [(a.tokens, toks(5, 100)), (a.token_buffer[:5], toks(5, 100))]
    buf = a.token_buffer
    ex.apply(E32, E32, I32(a.slot))                      # context done: 6 tokens
    ex.apply(E32, E32, I32(a.slot))                      # 7
    kept.append((a.tokens, toks(5, 100) + [1, 1]))
    assert ex.apply(I32(a.slot), E32, E32).size == 0     # paused: prompt 6 (max_input_len), tokens truncated
    assert a.prompt_len == 6 and a.get_num_tokens() == 6
    kept.append((a.tokens, toks(5, 100) + [1]))
    fins = []
    while not fins:
        fins = ex.apply(E32, E32, I32(a.slot)).tolist()
    assert fins == [a.slot] and a.is_generation_complete_state
    final = a.get_tokens()
    kept.append((a.tokens, final))
    cols = t.columns()
    t.remove_request(a)
    b = t.add_request(2, [7] * 9, 2)                    # reuses the slot, new storage
    c = t.add_request(3, [8] * 9, 2)
    for r in (b, c):
        kv.add_sequence(r.request_id, 9, 1, r)
        r.add_new_token(5)
    gc.collect()
    for view, expected in kept:
        assert view.shape == (len(expected),)
        assert [int(view[i]) for i in range(view.shape[0])] == expected  # every element, one by one
    assert [int(x) for x in buf[: len(final)]] == final
    assert int(buf.sum()) == int(np.asarray(buf).sum())  # the whole reserved buffer is readable
    assert cols["request_id"][b.slot] == 2
    del a, t, kv, ex, b, c
    gc.collect()
    for view, expected in kept:
        assert view.tolist() == expected
