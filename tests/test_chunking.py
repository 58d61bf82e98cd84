"""tests/test_chunking.py: setCtxRequestsChunkSize, EQUAL_PROGRESS / FIRST_COME_FIRST_SERVED / fitDraftTokens.

Twins: ext/policies/chunking.cpp, tllm_sched/policies/chunking.py (scalar loops and their array
twins), tllm_sched/naive/chunking.py. Each case calls the chunk-size setter directly, as
TensorRT-LLM's ContextChunkingTest does (scheduler.md §3.3, checklist item 15), on context
requests of the given remaining lengths, and checks every chunk size (and draft count) derived by
hand below, on every implementation (the `impl` fixture).
"""

from __future__ import annotations

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.policies import chunking
from tllm_sched.scheduler import BACKENDS, Scheduler

EP, FCFS = chunking.EQUAL_PROGRESS, chunking.FIRST_COME_FIRST_SERVED


@pytest.fixture(params=["cpp-direct", *BACKENDS, "python-array"])
def impl(request):
    """cpp-direct: the C++ setter's binding; a backend name: `Scheduler.set_ctx_requests_chunk_size`
    on that backend; python-array: the array twins of the Python policies (pure functions)."""
    return request.param


def chunks(impl, lengths, policy, capacity, unit, max_ctx=None, drafts=None, preset=None):
    """Chunk sizes (and remaining draft counts) after one call over requests of `lengths`."""
    drafts = drafts or [0] * len(lengths)
    if impl == "python-array":
        c, d = chunking.set_ctx_requests_chunk_size_vec(np.array(lengths), np.array(drafts), policy, capacity,
                                                        unit, max_ctx)
        return c.tolist(), (np.array(drafts) - d).tolist()
    t = ts.RequestTable(32)
    reqs = [t.add_request(i, [1] * n, 5, num_draft_tokens=d) for i, (n, d) in enumerate(zip(lengths, drafts))]
    for r, c in zip(reqs, preset or []):
        r.context_chunk_size = c
    slots = np.array([r.slot for r in reqs], dtype=np.int32)
    if impl == "cpp-direct":
        ts.set_ctx_requests_chunk_size(t, slots, getattr(ts.ContextChunkingPolicy, policy), capacity, unit, max_ctx)
    else:
        config = SchedulerConfig("GUARANTEED_NO_EVICT", len(lengths), max_num_tokens=capacity,
                                 max_context_length=max_ctx, chunking=ChunkingConfig(policy, unit))
        Scheduler(config, t, None, backend=impl).set_ctx_requests_chunk_size(slots)
    return [r.context_chunk_size for r in reqs], [r.num_draft_tokens for r in reqs]


# ================================================================================== EQUAL_PROGRESS


def test_equal_progress_round_robin_by_units(impl):
    # [20, 20], unit 5, capacity 25: round 1: 5, 5 (10); round 2: 10, 10 (20); round 3: A -> 15
    # (25); B: 25 + 5 > 25 -> kept at 10; 25 < 25 is false -> stop.
    assert chunks(impl, [20, 20], EP, 25, 5)[0] == [15, 10]


def test_equal_progress_without_capacity_takes_everything(impl):
    # No capacity, no max length: every request grows to its whole remainder (12 is not a
    # multiple of 5: 5, 10, then clamped to 12).
    assert chunks(impl, [12, 30], EP, None, 5)[0] == [12, 30]


def test_equal_progress_final_remainder_smaller_than_a_unit(impl):
    # §6 item 15: whole units except the final remainder. [12, 30], unit 5, capacity 22:
    # round 1: 5, 5 (10); round 2: 10, 10 (20); round 3: A 10 -> 12 (+2, 22 <= 22); B: 27 > 22 ->
    # kept. Stop (22 == capacity). A's last piece is 2 tokens; B stays a multiple of 5.
    assert chunks(impl, [12, 30], EP, 22, 5)[0] == [12, 10]
    # Capacity 20: round 2 ends at exactly 20 -> both 10; A never gets its 2-token remainder.
    assert chunks(impl, [12, 30], EP, 20, 5)[0] == [10, 10]


def test_equal_progress_leftover_smaller_than_a_unit_is_unused(impl):
    # [20, 20], unit 5, capacity 13: round 1: 5, 5 (10); round 2: 15 > 13 for both -> no progress
    # -> stop. 3 tokens of capacity stay unused.
    assert chunks(impl, [20, 20], EP, 13, 5)[0] == [5, 5]


def test_equal_progress_leftover_used_when_it_covers_a_final_remainder(impl):
    # [7, 20], unit 5, capacity 12: round 1: 5, 5 (10); round 2: A 5 -> 7 (+2, 12 <= 12); B: 17 > 12
    # -> kept. 12 == capacity -> stop.
    assert chunks(impl, [7, 20], EP, 12, 5)[0] == [7, 5]


def test_equal_progress_skipped_request_lets_later_ones_grow(impl):
    # [20, 7], unit 5, capacity 13: round 1: 5, 5 (10); round 2: A 15 > 13 -> skipped this round;
    # B 5 -> 7 (+2, 12); round 3: A 17 > 13 skipped; B no growth -> progress 0 -> stop.
    assert chunks(impl, [20, 7], EP, 13, 5)[0] == [5, 7]


def test_equal_progress_max_context_length_caps_growth(impl):
    # max_context_length 12, unit 5, no capacity: A = 30: 5, 10, then 15 > 12 -> 10. B = 8: 5, 8.
    # C = 12: 5, 10, 12 (<= 12) -> 12.
    assert chunks(impl, [30, 8, 12], EP, None, 5, max_ctx=12)[0] == [10, 8, 12]


def test_chunk_sizes_are_reset_before_chunking(impl):
    # §3.3 step 0: every chunk starts from 0, whatever it was (preset 3 and 20 here): [20, 20],
    # unit 5, capacity 10 -> 5, 5 (a preset of 3 would otherwise grow to 8).
    assert chunks(impl, [20, 20], EP, 10, 5, preset=[3, 20])[0] == [5, 5]


# ========================================================================= FIRST_COME_FIRST_SERVED


def test_fcfs_earlier_requests_take_all_they_can(impl):
    # [20, 20], unit 5, capacity 25: A wants 20, gets min(25, 20) = 20 (untruncated, kept);
    # capacity 5. B: min(5, 20) = 5 != 20 -> floor(5/5) * 5 = 5.
    assert chunks(impl, [20, 20], FCFS, 25, 5)[0] == [20, 5]


def test_fcfs_rounds_down_only_when_truncated(impl):
    # §6 item 15. [12, 20], unit 5, capacity 30: A = 12 whole (not a unit multiple, kept);
    # capacity 18; B: 18 != 20 -> floor(18/5) * 5 = 15.
    assert chunks(impl, [12, 20], FCFS, 30, 5)[0] == [12, 15]
    # Capacity 28: A 20 = whole, capacity 8; B: 8 -> 5; 3 tokens unused.
    assert chunks(impl, [20, 20], FCFS, 28, 5)[0] == [20, 5]


def test_fcfs_truncation_to_zero_and_capacity_decrements_by_the_rounded_chunk(impl):
    # [20, 20, 20], unit 5, capacity 27: A 20 (capacity 7); B 7 -> 5 (capacity 7 - 5 = 2);
    # C 2 -> 0.
    assert chunks(impl, [20, 20, 20], FCFS, 27, 5)[0] == [20, 5, 0]


def test_fcfs_without_capacity_takes_whole_remainders(impl):
    assert chunks(impl, [23, 7], FCFS, None, 5)[0] == [23, 7]


def test_fcfs_max_context_length(impl):
    # max_context_length 12, unit 5, no capacity: A = 30: min(12, 30) = 12 != 30 -> 10.
    # B = 12: 12 == 12 untruncated -> 12. C = 11: 11 (whole).
    assert chunks(impl, [30, 12, 11], FCFS, None, 5, max_ctx=12)[0] == [10, 12, 11]


# ================================================================================== fitDraftTokens


@pytest.mark.parametrize("policy", [EP, FCFS])
def test_draft_tokens_fill_only_the_last_unit(impl, policy):
    # §3.3 step 4. One request of 12 with 4 drafts, unit 5, capacity 15: chunk 12 (last chunk;
    # EQUAL_PROGRESS 5, 10, 12; FCFS 12 whole). Room: 5 - 12 % 5 = 3; capacity - chunks = 15 - 12 = 3
    # -> 3 kept, 1 discarded. FCFS must use the original capacity 15, not its decremented copy 3.
    assert chunks(impl, [12], policy, 15, 5, drafts=[4]) == ([12], [3])


def test_draft_tokens_bounded_by_max_context_length(impl):
    # 12 with 4 drafts, unit 5, max_context_length 13, no capacity: chunk 12; room min(3, 13 - 12) = 1
    # -> discard 3.
    assert chunks(impl, [12], EP, None, 5, max_ctx=13, drafts=[4]) == ([12], [1])


def test_draft_tokens_never_open_a_new_unit(impl):
    # A chunk that is a multiple of the unit has no room: 10 with 2 drafts -> all discarded.
    assert chunks(impl, [10], EP, None, 5, drafts=[2]) == ([10], [0])


def test_draft_tokens_of_a_non_last_chunk_are_kept(impl):
    # 20 with 3 drafts, capacity 10: chunk 10 is not the last chunk -> drafts untouched.
    assert chunks(impl, [20], EP, 10, 5, drafts=[3]) == ([10], [3])


def test_draft_tokens_share_the_capacity_in_request_order(impl):
    # [7 (3 drafts), 8 (3 drafts)], unit 5, capacity 17, EQUAL_PROGRESS: round 1: 5, 5 (10);
    # round 2: 7 (+2), 8 (+3) = 15; round 3: no growth -> stop. Chunks sum 15.
    # A: room 5 - 2 = 3, capacity left 17 - 15 = 2 -> 2 kept (1 discarded); total 17.
    # B: room 5 - 3 = 2, capacity left 0 -> 0 kept (3 discarded).
    assert chunks(impl, [7, 8], EP, 17, 5, drafts=[3, 3]) == ([7, 8], [2, 0])
