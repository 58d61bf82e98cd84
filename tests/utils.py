"""tests/utils.py: small shared builders for the tests (append-only; keep it small)."""

import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import tllm_sched as ts
from tllm_sched.config import SchedulerConfig
from tllm_sched.policies import chunking, common, reuse_skipping
from tllm_sched.scheduler import Scheduler

# The shared data beside the repository: replay scenarios with their logs, and real traces.
SHARED = Path(__file__).resolve().parents[2] / "shared"

# The batched Python backend's size thresholds, each with the value that sends the small cases of
# the tests down its large-list path: skip keys asked for in windows of two (the last key question
# a step can afford takes the rest), the array twins of the chunking policies, numpy counting of a
# split's others, array prefix sums after the first value.
LOWERED_THRESHOLDS = (
    (reuse_skipping, "WINDOW_CAP", 2),
    (chunking, "VECTOR_MIN_ITEMS", 1),
    (common, "FEW", 0),
    (common, "HEAD", 1),
)


@contextmanager
def lowered_thresholds():
    """Runs the body with LOWERED_THRESHOLDS in force, then restores the real values."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in LOWERED_THRESHOLDS]
    try:
        for module, name, value in LOWERED_THRESHOLDS:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def replay_cli(capsys, path, *args):
    """`tllm-sched replay PATH ARGS` run in this process: a CompletedProcess with the exit status
    and what it printed. (A test per exit path also starts the real command in a subprocess.)"""
    from tllm_sched.__main__ import main

    argv = ["replay", str(path), *args]
    code = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["tllm-sched", *argv], code, out, err)


def toks(n, start=0):
    """A prompt of n distinct token ids start, start+1, ..."""
    return list(range(start, start + n))


def new_table(capacity=64):
    return ts.RequestTable(capacity)


def new_kv(table, tpb=10, num_blocks=20, max_seq_len=100, **kw):
    """KVCacheManager(table, tpb, num_blocks, max_seq_len, **kw)."""
    return ts.KVCacheManager(table, tpb, num_blocks, max_seq_len, **kw)


def add_req(table, rid, tokens, max_new=10, **kw):
    """Adds request rid with the given prompt tokens (a list, or an int n meaning toks(n))."""
    if isinstance(tokens, int):
        tokens = toks(tokens)
    return table.add_request(rid, tokens, max_new, **kw)


def slots(*reqs):
    """An int32 slot array of the given LlmRequest handles."""
    return np.array([r.slot for r in reqs], dtype=np.int32)


WORK_STATS = ("blocks_hashed", "blocks_compared")


def kv_snapshot(kv, rids=()):
    """Everything a failed KV call must leave unchanged."""
    snap = {
        "free": kv.num_free_blocks,
        "free_secondary": kv.num_free_secondary_blocks,
        "q0": kv.free_queue(0).tolist(),
        "q1": kv.free_queue(1).tolist(),
        "cached": [kv.is_cached(b) for b in range(kv.max_num_blocks)],
        "parents": [kv.tree_parent(b) for b in range(kv.max_num_blocks)],
        "refs": [kv.ref_count(b) for b in range(kv.max_num_blocks)],
        # Work statistics (blocks hashed, compared) may grow in a failed call: they count effort,
        # not state, and the hashes they count are kept for later calls.
        "stats": {k: v for k, v in kv.get_kv_cache_stats().items() if k not in WORK_STATS},
    }
    for rid in rids:
        if kv.has_sequence(rid):
            snap[("ids", rid)] = kv.get_cache_block_ids(rid).tolist()
            snap[("ntok", rid)] = kv.get_sequence_num_tokens(rid)
        else:
            snap[("ids", rid)] = None
    return snap


def table_snapshot(table, handles=()):
    """Every column of the table (all slots) and the tokens of the given live requests."""
    snap = {"len": len(table)}
    snap.update({k: v.tolist() for k, v in table.columns().items()})
    for r in handles:
        if r.is_valid:
            snap[("tokens", r.request_id)] = r.get_tokens()
    return snap


def full_snapshot(table, kv=None, lists=(), handles=()):
    """What a failed call must leave unchanged: table columns, tokens, list order, KV pool."""
    snap = table_snapshot(table, handles)
    live = [r.request_id for r in handles if r.is_valid]
    if kv is not None:
        snap["kv"] = kv_snapshot(kv, live)
    for i, lst in enumerate(lists):
        snap[("list", i)] = np.array(lst.slots).tolist()
    return snap


# ------------------------------------------------------------------ capacity policies (tests/test_<policy>.py)
MU, GNE, STATIC = "MAX_UTILIZATION", "GUARANTEED_NO_EVICT", "STATIC_BATCH"
S = ts.LlmRequestState
_EMPTY = np.zeros(0, dtype=np.int32)


class CapacityBed:
    """A request table, a KV cache and an executor to put requests into the states a test needs
    (tests/test_<policy>.py, tests/test_capacity_scheduler.py).

    Defaults: 10 tokens per block, max_seq_len (= the single window) 100, reuse off. "G(p)" (`gen`)
    is a request that ran its context of p tokens through the executor: GENERATION_IN_PROGRESS,
    holding ceil(p/10) blocks; its KV sequence has p tokens and the request p + 1 (the newest token
    has no KV yet). "N(p)" (`new`) is a new CONTEXT_INIT request of p tokens.
    """

    def __init__(self, backend="cpp", blocks=10, tpb=10, max_seq_len=100, reuse=False, kv=True):
        self.backend = backend
        self.t = ts.RequestTable(64)
        self.kv = ts.KVCacheManager(self.t, tpb, blocks, max_seq_len, enable_block_reuse=reuse) if kv else None
        self.ex = ts.SimExecutor(self.t, self.kv, None, 1000)

    def new(self, rid, prompt, max_new=10, **kw):
        """N: a new context. `prompt` is a length (all 1s) or a token list."""
        tokens = [1] * prompt if isinstance(prompt, int) else list(prompt)
        return self.t.add_request(rid, tokens, max_new, **kw)

    def step(self, *reqs):
        """One executor step over `reqs` (contexts advance one chunk, generations add a token)."""
        self.ex.apply(_EMPTY, _EMPTY, np.array([r.slot for r in reqs], dtype=np.int32))

    def gen(self, rid, prompt, max_new=10, **kw):
        """G: a request whose whole context ran; it is generating and holds its prompt blocks."""
        r = self.new(rid, prompt, max_new, **kw)
        self.step(r)
        assert r.state == S.GENERATION_IN_PROGRESS
        return r

    def chunked(self, rid, prompt, first_chunk, max_new=10, **kw):
        """A context that ran its first chunk only: CONTEXT_INIT, not on its first chunk."""
        r = self.new(rid, prompt, max_new, **kw)
        r.context_chunk_size = first_chunk
        self.step(r)
        assert r.state == S.CONTEXT_INIT and not r.is_first_context_chunk
        return r

    def with_state(self, rid, prompt, state, max_new=10, **kw):
        r = self.new(rid, prompt, max_new, **kw)
        if state != S.CONTEXT_INIT:
            r.set_state(state)
        return r

    def scheduler(self, policy, max_num_requests=8, peft=None, two_steps=False, **cfg):
        config = SchedulerConfig(policy=policy, max_num_requests=max_num_requests, two_steps_look_ahead=two_steps, **cfg)
        return Scheduler(config, self.t, self.kv, None, peft, backend=self.backend)

    def ids(self, slots):
        return self.t.request_ids(np.ascontiguousarray(slots, dtype=np.int32)).tolist()

    def capacity(self, policy, reqs, **kw):
        """(fitting ids, disagg-gen-init ids, paused ids) of one capacity call over `reqs`, in order."""
        fit, disagg, paused = self.scheduler(policy, **kw).schedule_capacity(
            np.array([r.slot for r in reqs], dtype=np.int32))
        return self.ids(fit), self.ids(disagg), self.ids(paused)
