"""bench/test_bench_primitives.py: the binding primitives a Python scheduler is built from.

One crossing (a property read, a method call) against its batched or zero-copy alternative:
per-request property reads vs a column read through a view, view creation, and the array
forms of the KV-cache queries vs their per-request loops. The state is a steady decode batch
(cpp backend) of N requests; the context-block queries get N contexts on a reuse-enabled cache.
"""

import numpy as np
import pytest

from tllm_sched import _core

EMPTY = np.zeros(0, dtype=np.int32)

SIZES = (64, 1024)


@pytest.fixture(params=SIZES, ids=lambda n: f"N={n}")
def decode(request, synthetic_state):
    st = synthetic_state("decode", "GUARANTEED_NO_EVICT", request.param, "cpp")
    return st, np.array(st.active.slots), st.active.requests()


# ---------------------------------------------------------------------------- request state


def test_property_read_one(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = "property read (one request)"
    req = reqs[0]
    benchmark(lambda: req.state_value)


def test_property_read_all(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"state of every request N={len(reqs)}"
    benchmark(lambda: [r.state_value for r in reqs])


def test_column_read_all(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"state of every request N={len(reqs)}"
    state = st.table.columns()["state"]  # zero-copy view, built once
    benchmark(lambda: state[slots])


def test_gather_all(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"state of every request N={len(reqs)}"
    benchmark(st.table.gather, slots)


# ----------------------------------------------------------------------------------- views


def test_view_columns(benchmark, decode):
    st, _, _ = decode
    benchmark.group = "view creation"
    benchmark(st.table.columns)


def test_view_active_slots(benchmark, decode):
    st, _, _ = decode
    benchmark.group = "view creation"
    active = st.active
    benchmark(lambda: active.slots)


def test_view_tokens(benchmark, decode):
    _, _, reqs = decode
    benchmark.group = "view creation"
    req = reqs[0]
    benchmark(lambda: req.tokens)


def test_request_handles(benchmark, decode):
    st, _, reqs = decode
    benchmark.group = f"request handles N={len(reqs)}"
    benchmark(st.active.requests)


# ------------------------------------------------------------------------ KV-cache queries


def test_remaining_blocks_loop(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"remaining blocks to completion N={len(reqs)}"
    query = st.kv.get_remaining_blocks_to_completion
    benchmark(lambda: [query(r) for r in reqs])


def test_remaining_blocks_batch(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"remaining blocks to completion N={len(reqs)}"
    benchmark(st.kv.get_remaining_blocks_to_completion_batch, slots)


def test_needed_blocks_loop(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"needed blocks one step N={len(reqs)}"
    query = st.kv.get_needed_blocks_one_step
    benchmark(lambda: [query(r) for r in reqs])


def test_needed_blocks_batch(benchmark, decode):
    st, slots, reqs = decode
    benchmark.group = f"needed blocks one step N={len(reqs)}"
    benchmark(st.kv.get_needed_blocks_one_step_batch, slots, False)


@pytest.fixture(params=SIZES, ids=lambda n: f"N={n}")
def contexts(request):
    """N context requests of 1,024 tokens on a reuse-enabled cache: every second one shares a
    cached 512-token prefix (prefilled and stored), so the query walks the tree before missing."""
    n = request.param
    table = _core.RequestTable(2 * n)
    kv = _core.KVCacheManager(table, 32, 2 * n * 40, 2048, enable_block_reuse=True)
    rng = np.random.default_rng(0)
    shared = rng.integers(0, 32000, 512, dtype=np.int32)
    donor = table.add_request(n, np.concatenate([shared, rng.integers(0, 32000, 8, dtype=np.int32)]), 1)
    executor = _core.SimExecutor(table, kv, None, 2048)
    executor.apply(EMPTY, EMPTY, np.array([donor.slot], dtype=np.int32))  # finishes; its blocks are stored
    reqs = []
    for i in range(n):
        head = shared if i % 2 == 0 else rng.integers(0, 32000, 512, dtype=np.int32)
        reqs.append(table.add_request(i, np.concatenate([head, rng.integers(0, 32000, 512, dtype=np.int32)]), 8))
    return kv, np.array([r.slot for r in reqs], dtype=np.int32), reqs


# NOTE(bench): find_new_context_block builds every full-block key of the prompt before walking
# the tree, so both forms cost O(prompt length) per request; the batch form saves only crossings.
def test_new_context_block_loop(benchmark, contexts):
    kv, slots, reqs = contexts
    benchmark.group = f"first new context block N={len(reqs)}"
    query = kv.find_new_context_block
    benchmark(lambda: [query(r) for r in reqs])


def test_new_context_block_batch(benchmark, contexts):
    kv, slots, reqs = contexts
    benchmark.group = f"first new context block N={len(reqs)}"
    benchmark(kv.find_new_context_block_batch, slots)
