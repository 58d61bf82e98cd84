"""tests/test_micro_batch_scheduler.py: the micro-batch scheduler, one hand-built situation per subtlety.

Twin of ext/micro_batch_scheduler.cpp (scheduler.md §3). Items of the §6 checklist covered here:
12, 13, 14 and 16 (pinned stable, README pin 4), plus in-flight skipping, the gating window, the
token budget, max_context_length with and without chunking, draft-token fitting and the output
sort. No KV cache is involved: the micro-batch scheduler never looks at blocks.

Notation: "C(p)" a CONTEXT_INIT request with a p-token prompt; "G" a GENERATION_IN_PROGRESS
request (beam 1 unless said), which costs beam width + draft tokens budget tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.scheduler import Scheduler

S = ts.LlmRequestState
EP, FCFS = "EQUAL_PROGRESS", "FIRST_COME_FIRST_SERVED"


class Bed:
    def __init__(self, backend):
        self.backend = backend
        self.t = ts.RequestTable(64)

    def ctx(self, rid, prompt, max_new=10, **kw):
        return self.t.add_request(rid, [1] * prompt, max_new, **kw)

    def gen(self, rid, prompt=10, max_new=10, state=S.GENERATION_IN_PROGRESS, **kw):
        r = self.t.add_request(rid, [1] * prompt, max_new, **kw)
        r.set_state(state)
        return r

    def ids(self, slots):
        return self.t.request_ids(np.ascontiguousarray(slots, dtype=np.int32)).tolist()

    def micro(self, reqs, *, max_batch_size=16, max_num_tokens=None, max_context_length=None, chunking=None,
              unit=5, inflight=()):
        """(context ids, generation ids) of one micro-batch call over `reqs`."""
        config = SchedulerConfig(
            policy="GUARANTEED_NO_EVICT", max_num_requests=max_batch_size, max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens, max_context_length=max_context_length,
            chunking=None if chunking is None else ChunkingConfig(chunking, unit),
        )
        s = Scheduler(config, self.t, None, backend=self.backend)
        ctx, gen = s.schedule_micro(np.array([r.slot for r in reqs], dtype=np.int32),
                                    np.array(inflight, dtype=np.int64))
        return self.ids(ctx), self.ids(gen)


# ============================================================================== skips and gating (§3.2.1)


def test_inflight_requests_are_skipped_without_taking_a_slot(backend):
    # §3.2 step 1: an id in inflightReqIds is skipped and does not count toward the batch size.
    # max_batch_size 1, [G0, G1] with G0 in flight -> G1 gets the one slot.
    b = Bed(backend)
    reqs = [b.gen(0), b.gen(1)]
    assert b.micro(reqs, max_batch_size=1, inflight=[0]) == ([], [1])
    assert b.micro(reqs, max_batch_size=1) == ([], [0])


def test_micro_gating_window_is_context_init_up_to_generation_to_complete(backend):
    # §1.1 / README pin 6: micro window [CONTEXT_INIT, GENERATION_TO_COMPLETE). Out: GEN_TO_COMPLETE
    # (0), DISAGG_GENERATION_INIT (1), GENERATION_COMPLETE (2), ENCODER_INIT (6). In:
    # DISAGG_GENERATION_TRANS_COMPLETE (3, a generation), DISAGG_CONTEXT_INIT_AND_TRANS (4, a
    # context), GENERATION_IN_PROGRESS (5).
    b = Bed(backend)
    reqs = [b.gen(0, state=S.GENERATION_TO_COMPLETE), b.gen(1, state=S.DISAGG_GENERATION_INIT),
            b.gen(2, state=S.GENERATION_COMPLETE), b.gen(3, state=S.DISAGG_GENERATION_TRANS_COMPLETE),
            b.gen(4, state=S.DISAGG_CONTEXT_INIT_AND_TRANS), b.gen(5), b.gen(6, state=S.ENCODER_INIT)]
    assert b.micro(reqs) == ([4], [3, 5])


def test_batch_size_limit_counts_contexts_and_generations(backend):
    # §3.2 step 5: max_batch_size 2, [C0, G1, G2] -> C0 and G1, then break.
    b = Bed(backend)
    assert b.micro([b.ctx(0, 10), b.gen(1), b.gen(2)], max_batch_size=2) == ([0], [1])


# =============================================================================== beam width (item 13)


def test_beam_width_mismatch_skips_without_taking_a_slot(backend):
    # §6 item 13. max_batch_size 2, [G0 beam 1, G1 beam 2, G2 beam 1]: G0 fixes the batch beam width
    # to 1; G1 differs -> skipped (continue, no slot); G2 takes the second slot.
    b = Bed(backend)
    reqs = [b.gen(0), b.gen(1, beam_width=2), b.gen(2)]
    assert b.micro(reqs, max_batch_size=2) == ([], [0, 2])


def test_budget_is_checked_before_the_beam_width(backend):
    # §6 item 13. Budget 3, [G0 beam 1 (1 token), G1 beam 4 (4 tokens), G2 beam 1]: G1: 1 + 4 > 3 ->
    # break, although G1 would have been skipped for its beam width and G2 (1 + 1 <= 3) fits.
    b = Bed(backend)
    reqs = [b.gen(0), b.gen(1, beam_width=4), b.gen(2)]
    assert b.micro(reqs, max_num_tokens=3) == ([], [0])
    # A budget of 5 lets G1 pass the budget check; then it is skipped for its beam width.
    assert b.micro(reqs, max_num_tokens=5) == ([], [0, 2])


# ============================================================================== token budget (§3.2)


def test_token_budget_breaks_and_counts_drafts(backend):
    # §3.2 steps 3–4. Budget 9, no chunking. C0 = C(6) with 2 draft tokens costs 6 + 2 = 8;
    # G1 costs 1 (9 <= 9); G2: 10 > 9 -> break.
    b = Bed(backend)
    reqs = [b.ctx(0, 6, num_draft_tokens=2), b.gen(1), b.gen(2)]
    assert b.micro(reqs, max_num_tokens=9) == ([0], [1])
    # A generation costs beam width + draft tokens: G3 with 7 drafts costs 8 > 9 - 8 -> break, and
    # the cheaper G4 behind it is not reached.
    reqs = [b.ctx(5, 6, num_draft_tokens=2), b.gen(3, num_draft_tokens=7), b.gen(4)]
    assert b.micro(reqs, max_num_tokens=9) == ([5], [])


def test_non_chunked_contexts_break_and_consume_budget(backend):
    # §6 item 12, no chunking. Budget 12, [C0 = C(30), G1, G2]: 30 > 12 -> break: nothing.
    # [C3 = C(10), G4, G5, G6]: C3 costs 10, G4 -> 11, G5 -> 12, G6: 13 > 12 -> break.
    b = Bed(backend)
    assert b.micro([b.ctx(0, 30), b.gen(1), b.gen(2)], max_num_tokens=12) == ([], [])
    assert b.micro([b.ctx(3, 10), b.gen(4), b.gen(5), b.gen(6)], max_num_tokens=12) == ([3], [4, 5])


def test_chunked_contexts_do_not_consume_budget_before_generations(backend):
    # §6 item 12, chunking EQUAL_PROGRESS unit 5. Budget 12, [C0 = C(30), G1, G2]: C0 is queued
    # for chunking (no check, no break, 30 tokens noted); G1, G2 take 2 tokens. After the loop:
    # 30 > 12 - 2 -> not all fit -> capacity 10 -> C0 grows 5, 10 -> chunk 10.
    b = Bed(backend)
    c0 = b.ctx(0, 30)
    assert b.micro([c0, b.gen(1), b.gen(2)], max_num_tokens=12, chunking=EP) == ([0], [1, 2])
    assert c0.context_chunk_size == 10


# ========================================================================= max_context_length (§3.2)


def test_too_long_context_without_chunking_is_an_error(backend):
    # §3.2 step 3: without chunking n = whole prompt + drafts; n > maxContextLength is a hard error.
    # C(10) + 3 drafts = 13 > 12.
    b = Bed(backend)
    with pytest.raises(ts.SchedulingError, match="request 0"):
        b.micro([b.ctx(0, 10, num_draft_tokens=3)], max_context_length=12)
    assert issubclass(ts.SchedulingError, RuntimeError)
    # C(12) without drafts: 12 <= 12 is fine.
    assert b.micro([b.ctx(1, 12)], max_context_length=12) == ([1], [])


def test_too_long_context_fails_before_the_budget_check(backend):
    # §3.2 step 3 order: the length assertion comes before the budget break. Budget 5,
    # [G0, C1 = C(20)], max_context_length 12: C1 would break on the budget (1 + 20 > 5) but the
    # length check fails first.
    b = Bed(backend)
    with pytest.raises(ts.SchedulingError, match="request 1: context of 20 tokens exceeds max_context_length 12"):
        b.micro([b.gen(0), b.ctx(1, 20)], max_num_tokens=5, max_context_length=12)
    # Never reached (batch full after G0): no error.
    assert b.micro([b.gen(2), b.ctx(3, 20)], max_batch_size=1, max_context_length=12) == ([], [2])


def test_too_long_context_with_chunking_is_chunked(backend):
    # §3.2 step 3 with chunking: n = 17 > 12 -> n = 12, allFit = false even without a budget.
    # EQUAL_PROGRESS unit 5, no capacity: 5, 10, then 15 > 12 -> chunk 10 (not the last chunk).
    b = Bed(backend)
    c0 = b.ctx(0, 17)
    assert b.micro([c0], max_context_length=12, chunking=EP) == ([0], [])
    assert c0.context_chunk_size == 10 and not c0.is_last_context_chunk
    # FCFS: min(17, 12) = 12 != 17 -> floor(12/5) * 5 = 10.
    c1 = b.ctx(1, 17)
    assert b.micro([c1], max_context_length=12, chunking=FCFS) == ([1], [])
    assert c1.context_chunk_size == 10


# ====================================================================== chunking in the loop (item 14)


def test_contexts_to_be_chunked_take_slots_even_with_chunk_zero(backend):
    # §6 item 14. FCFS unit 5, budget 10, max_batch_size 2, [C0 = C(20), C1 = C(20), G2]:
    # C0 and C1 are queued (2 slots -> break; G2 never reached). 40 > 10 -> FCFS with capacity 10:
    # C0: min(10, 20) = 10 -> 10; capacity 0; C1: 0 -> dropped. Output: C0 only.
    b = Bed(backend)
    c0, c1 = b.ctx(0, 20), b.ctx(1, 20)
    assert b.micro([c0, c1, b.gen(2)], max_batch_size=2, max_num_tokens=10, chunking=FCFS) == ([0], [])
    assert (c0.context_chunk_size, c1.context_chunk_size) == (10, 0)


def test_chunk_size_is_set_to_the_remainder_when_all_fit(backend):
    # §3.2 notes / §3.4: when everything fits, chunking never runs: each chunked-mode context gets
    # chunk = remaining (23, not a multiple of the unit 5), drafts untouched (4 stays 4).
    # A request not reached (batch full) keeps its old chunk value (7).
    b = Bed(backend)
    c0, c1 = b.ctx(0, 23, num_draft_tokens=4), b.ctx(1, 20)
    c1.context_chunk_size = 7
    assert b.micro([c0, c1], max_batch_size=1, chunking=EP) == ([0], [])
    assert (c0.context_chunk_size, c0.num_draft_tokens) == (23, 4)
    assert c1.context_chunk_size == 7


def test_draft_tokens_are_trimmed_to_the_last_chunk_unit(backend):
    # §3.3 step 4 via the micro loop. C(12) with 5 drafts, unit 5, max_context_length 15:
    # n = 12 + 5 = 17 > 15 -> chunking. EQUAL_PROGRESS: 5, 10, 12 (clamped, <= 15) -> last chunk 12.
    # fitDraftTokens: room in the last unit = 5 - 12 % 5 = 3; min(3, 15 - 12) = 3 -> discard 5 - 3 = 2.
    b = Bed(backend)
    c0 = b.ctx(0, 12, num_draft_tokens=5)
    assert b.micro([c0], max_context_length=15, chunking=EP) == ([0], [])
    assert (c0.context_chunk_size, c0.num_draft_tokens) == (12, 3)


# ================================================================================= output sort (§3.2.9)


def test_output_is_sorted_by_lora_no_lora_first(backend):
    # §3.2 step 9: no chunks present -> whole context list sorted by LoRA id, "no LoRA" first, then
    # ascending; generation list likewise.
    b = Bed(backend)
    reqs = [b.ctx(0, 10, lora_task_id=3), b.ctx(1, 10), b.ctx(2, 10, lora_task_id=1), b.ctx(3, 10),
            b.gen(4, lora_task_id=9), b.gen(5, lora_task_id=2), b.gen(6)]
    assert b.micro(reqs) == ([1, 3, 2, 0], [6, 5, 4])


def test_non_last_chunks_come_first(backend):
    # §3.2 step 9 with chunks present. EQUAL_PROGRESS unit 5, budget 15, [A = C(5), B = C(20),
    # C = C(20)]: round 1 gives 5 each (15) -> stop. A is on its last chunk, B and C are not:
    # non-last first -> [B, C, A]. (libstdc++'s std::partition would give [C, B, A]; pinned stable.)
    b = Bed(backend)
    reqs = [b.ctx(0, 5), b.ctx(1, 20), b.ctx(2, 20)]
    assert b.micro(reqs, max_num_tokens=15, chunking=EP) == ([1, 2, 0], [])


def test_each_partition_is_sorted_by_lora(backend):
    # §3.2 step 9: partition, then sort each part by LoRA. Budget 20, unit 5, EQUAL_PROGRESS,
    # [A = C(5) lora 1, B = C(20) lora 2, C = C(20), D = C(5)]: round 1 -> 5 each (20) -> stop.
    # Non-last [B, C] -> by LoRA [C, B]; last [A, D] -> [D, A]. Output [C, B, D, A].
    b = Bed(backend)
    reqs = [b.ctx(0, 5, lora_task_id=1), b.ctx(1, 20, lora_task_id=2), b.ctx(2, 20), b.ctx(3, 5)]
    assert b.micro(reqs, max_num_tokens=20, chunking=EP) == ([2, 1, 3, 0], [])


def test_equal_keys_keep_their_input_order(backend):
    # §6 item 16, pinned stable (README pin 4): 20 generations (more than the 16 below which
    # std::sort happens to be stable), input order 19, 18, ..., 0, LoRA id 5 for odd ids and none for
    # even ones. Sorted: every no-LoRA request in input order, then every LoRA-5 request in input order.
    b = Bed(backend)
    reqs = [b.gen(i, lora_task_id=(5 if i % 2 else None)) for i in range(19, -1, -1)]
    evens, odds = list(range(18, -1, -2)), list(range(19, 0, -2))
    assert b.micro(reqs, max_batch_size=32) == ([], evens + odds)
    # Contexts without LoRA keep their order too (no chunks present).
    ctx = [b.ctx(i, 10) for i in (25, 21, 23, 20, 24, 22)]
    assert b.micro(ctx) == ([25, 21, 23, 20, 24, 22], [])


def test_core_micro_batch_scheduler_refuses_bad_limits():
    # The C++ scheduler checks its per-call limits itself, before it looks at a request.
    t = ts.RequestTable(4)
    r = t.add_request(0, [1] * 5, 3)
    m = ts.MicroBatchScheduler(None)
    one = np.array([r.slot], dtype=np.int32)
    with pytest.raises(ValueError, match="^max_batch_size must be positive$"):
        m.schedule(t, one, None, 0)
    with pytest.raises(ValueError, match="^max_num_tokens must be positive or None$"):
        m.schedule(t, one, None, 4, 0)
    ctx, gen = m.schedule(t, one, None, 1, 5)
    assert (ctx.tolist(), gen.tolist()) == ([r.slot], [])
