"""tests/utils.py: small shared builders for the tests (append-only; keep it small)."""

import numpy as np

import tllm_sched as ts


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


def package_env():
    """Environment for a subprocess that must import the same tllm_sched as this process."""
    import os
    from pathlib import Path

    env = dict(os.environ)
    here = str(Path(ts.__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
