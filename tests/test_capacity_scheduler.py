"""tests/test_capacity_scheduler.py: the capacity policies, one hand-built situation per subtlety.

Twin of ext/policies/{max_utilization,guaranteed_no_evict,max_requests,reuse_skipping}.cpp and
ext/capacity_scheduler.cpp. Items of the scheduler.md §6 checklist covered here: 1–11 and 17 (12–16
are in test_micro_batch_scheduler.py and test_chunking.py). Every expected id list is derived by
hand from the spec text in the comment beside it.

Common set-up unless a test says otherwise: 10 tokens per block, max_seq_len (= the single window)
100, reuse off. "G(p)" is a request that ran its context of p tokens through the executor: it is
GENERATION_IN_PROGRESS, holds ceil(p/10) blocks, its KV sequence has p tokens and the request p + 1
(the newest token has no KV yet, §2.6). "N(p)" is a new CONTEXT_INIT request of p tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import SchedulerConfig
from tllm_sched.scheduler import BACKENDS, Scheduler

MU, GNE, STATIC = "MAX_UTILIZATION", "GUARANTEED_NO_EVICT", "STATIC_BATCH"
S = ts.LlmRequestState
_EMPTY = np.zeros(0, dtype=np.int32)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


class Bed:
    """A request table, a KV cache and an executor to put requests into the states a test needs."""

    def __init__(self, backend, blocks=10, tpb=10, max_seq_len=100, reuse=False, kv=True):
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


# =============================================================================== MAX_UTILIZATION (§2.5)


def test_mu_pause_chain_from_the_tail_retries_the_same_request(backend):
    # §6 item 1. 4 blocks; G1, G2, G3 = G(10) hold 1 block each -> 1 free. Each G needs
    # ceil(11/10) - ceil(10/10) = 1 block for its next token; N0 = N(20) needs floor(20/10) = 2.
    # List [N0, G1, G2, G3]:
    #   N0: 0 + 2 > 1 fails -> last started in [0, 4) is G3: pause it (free 2), end = 3; retry N0: 2 <= 2.
    #   G1: 2 + 1 > 2 fails -> last started in [1, 3) is G2: pause it (free 3), end = 2; retry G1: 3 <= 3.
    #   i = 2 = end: stop. Paused in the order of pausing: [3, 2].
    b = Bed(backend, blocks=4)
    n0 = b.new(0, 20)
    g = [b.gen(i, 10) for i in (1, 2, 3)]
    assert b.kv.num_free_blocks == 1
    assert [b.kv.get_needed_blocks_one_step(r) for r in (n0, *g)] == [2, 1, 1, 1]
    assert b.capacity(MU, [n0, *g]) == ([0, 1], [], [3, 2])


def test_mu_victims_exclude_already_scheduled_requests(backend):
    # §6 item 1. 4 blocks; G0, G1 hold 1 each -> 2 free. [G0, G1, N2 = N(20)]:
    # G0: 1 <= 2, G1: 2 <= 2, N2: 2 + 2 > 2 fails; the search covers [2, 3) only: N2 is not started
    # -> stop. G0 and G1 are never victims although pausing them would free blocks.
    b = Bed(backend, blocks=4)
    reqs = [b.gen(0, 10), b.gen(1, 10), b.new(2, 20)]
    assert b.capacity(MU, reqs) == ([0, 1], [], [])


def test_mu_failing_started_request_pauses_itself_and_ends_the_loop(backend):
    # §6 item 1, §2.5 consequences. 3 blocks; G0, G1 hold 1 each -> 1 free; N2 = N(10).
    # G0: 1 <= 1. G1: 2 > 1 fails; search [1, 3) backwards: N2 not started, G1 started -> G1 is its
    # own victim, end = 1 -> loop over. N2 would now fit (snapshot free 2 >= 1 + 1) but is never tried.
    b = Bed(backend, blocks=3)
    reqs = [b.gen(0, 10), b.gen(1, 10), b.new(2, 10)]
    assert b.capacity(MU, reqs) == ([0], [], [1])


def test_mu_count_limit_pauses_started_requests(backend):
    # §6 item 2. max_num_requests 2, plenty of blocks, [G0, G1, G2, G3]:
    # G0, G1 admitted. G2: count full -> failure -> pause G3 (end = 3), retry G2: count still full ->
    # search [2, 3): G2 itself -> paused, end = 2. Every started request from G2 on is paused.
    b = Bed(backend, blocks=20)
    reqs = [b.gen(i, 10) for i in range(4)]
    assert b.capacity(MU, reqs, max_num_requests=2) == ([0, 1], [], [3, 2])


def test_mu_count_limit_pauses_a_started_request_for_a_new_one_in_vain(backend):
    # §6 item 2 with a new request at the count limit. max_num_requests 1, [G0, N1, G2]:
    # G0 admitted. N1: count full -> pause G2 (end = 2); retry N1: still full -> search [1, 2):
    # N1 is not started -> stop. G2 was paused although N1 still did not get in.
    b = Bed(backend, blocks=20)
    reqs = [b.gen(0, 10), b.new(1, 10), b.gen(2, 10)]
    assert b.capacity(MU, reqs, max_num_requests=1) == ([0], [], [2])


def test_mu_failing_new_request_blocks_everything_behind_it(backend):
    # §6 item 3. 2 blocks, [N0 = N(30), N1 = N(10)]: N0 needs 3 > 2; nothing started in [0, 2) ->
    # stop. N1 (needs 1 <= 2) would fit but is not scheduled: head-of-line blocking.
    b = Bed(backend, blocks=2)
    reqs = [b.new(0, 30), b.new(1, 10)]
    assert b.capacity(MU, reqs) == ([], [], [])
    # Without N0 in front, N1 fits: the stop is what kept it out.
    assert b.capacity(MU, reqs[1:]) == ([1], [], [])


def test_mu_pausing_frees_only_blocks_no_other_sequence_holds(backend):
    # §2.5 5e / kvcache.md §2.1 schedulingRemoveSequence: a block comes back to the snapshot only
    # when its scheduling ref count drops to 0. Reuse on, 5 blocks. P = G(20 ones) holds [p0, p1]
    # and stored p0 (its first 19 tokens hold one full block). Q = G(25 ones) reused p0 and took
    # [q1, q2]. G0 = G(10 threes) holds [g0] and has 29 draft tokens: its next step needs
    # min(29 + 1, 40 - 0) = 30 more tokens: ceil(40/10) - ceil(10/10) = 3 blocks. 0 free. [G0, P, Q]:
    #   G0: 3 > 0 -> pause Q: p0 is still held by P, q1 and q2 come back -> 2; retry: 3 > 2 ->
    #   pause P: p0 and p1 come back -> 4; retry: 3 <= 4 -> admitted. Paused [Q, P].
    # (A generation fails here, not a new context: a new context would claim its reuse key and be
    # skipped on the retry, see test_mu_retry_after_a_pause_skips_the_request_that_claimed_its_key.)
    b = Bed(backend, blocks=5, reuse=True)
    p, q = b.gen(1, 20, max_new=5), b.gen(2, 25, max_new=5)
    g0 = b.gen(0, [3] * 10, max_new=40)
    g0.set_num_draft_tokens(29)
    assert q.prepopulated_prompt_len == 10 and b.kv.num_free_blocks == 0
    assert b.kv.get_needed_blocks_one_step(g0) == 3
    assert b.kv.start_scheduling() == 0
    assert b.kv.scheduling_remove_sequence(2) == 2
    assert b.kv.scheduling_remove_sequence(1) == 4
    assert b.capacity(MU, [g0, p, q]) == ([0], [], [2, 1])


def test_mu_peft_pages_accumulate_and_a_peft_failure_pauses(backend):
    # README pin 5, §2.7. 15 device pages, 10 per task. [G0 lora 1, N1 lora 1, G2 lora 2]:
    # G0: 10 <= 15 (total 10). N1: task 1 already counted -> 0 pages. G2: 10 + 10 = 20 > 15 fails
    # (accumulated, unlike the first Python port) -> search [2, 3): G2 started -> pauses itself.
    b = Bed(backend, blocks=20)
    reqs = [b.gen(0, 10, lora_task_id=1), b.new(1, 10, lora_task_id=1), b.gen(2, 10, lora_task_id=2)]
    peft = ts.PeftCacheManager(10, 15)
    assert b.capacity(MU, reqs, peft=peft) == ([0, 1], [], [2])


def test_mu_two_steps_look_ahead_reserves_two_tokens(backend):
    # §2.6 getNeededBlocksOneStep, two_steps_look_ahead. G0 = G(19) holds ceil(19/10) = 2 blocks of 2.
    # One step: KV 19 -> 20 tokens: ceil(20/10) - ceil(19/10) = 0 blocks -> fits.
    # Two steps: 19 -> 21: 3 - 2 = 1 block > 0 free -> fails -> G0 pauses itself.
    b = Bed(backend, blocks=2)
    g0 = b.gen(0, 19)
    assert b.kv.get_needed_blocks_one_step(g0, False) == 0
    assert b.kv.get_needed_blocks_one_step(g0, True) == 1
    assert b.capacity(MU, [g0]) == ([0], [], [])
    assert b.capacity(MU, [g0], two_steps=True) == ([], [], [0])


def test_mu_disagg_generation_init_is_admitted_with_its_prompt_blocks(backend):
    # §1.1 disagg exception, §2.1 output split. D0 (DISAGG_GENERATION_INIT, outside the gating
    # window) needs floor(10/10) = 1 block like a first context chunk. 1 block: [D0, N1 = N(10)]:
    # D0: 1 <= 1 -> admitted into the separate disagg list; N1: 2 > 1, nothing started -> stop.
    b = Bed(backend, blocks=1)
    reqs = [b.with_state(0, 10, S.DISAGG_GENERATION_INIT), b.new(1, 10)]
    assert b.kv.get_needed_blocks_one_step(reqs[0]) == 1
    assert b.capacity(MU, reqs) == ([], [0], [])
    b2 = Bed(backend, blocks=10)
    reqs = [b2.with_state(0, 10, S.DISAGG_GENERATION_INIT), b2.new(1, 10)]
    assert b2.capacity(MU, reqs) == ([1], [0], [])


def test_mu_skips_states_outside_the_gating_window(backend):
    # §1.1: capacity window [CONTEXT_INIT, GENERATION_COMPLETE). ENCODER_INIT (below) and
    # GENERATION_COMPLETE (at the end) are passed over; GENERATION_TO_COMPLETE is inside.
    b = Bed(backend, blocks=20)
    reqs = [b.with_state(0, 10, S.ENCODER_INIT), b.with_state(1, 10, S.GENERATION_COMPLETE), b.new(2, 10),
            b.with_state(3, 10, S.DISAGG_CONTEXT_INIT_AND_TRANS)]
    assert b.capacity(MU, reqs) == ([2, 3], [], [])


# =========================================================================== GUARANTEED_NO_EVICT (§2.4)


def test_gne_generations_are_admitted_without_a_check(backend):
    # §6 item 4. 3 blocks; G0, G1 = G(10) with 50 new tokens hold 1 block each -> 1 free. Each needs
    # ceil(60/10) - 1 = 5 more blocks to completion. Both are admitted anyway (available 1 - 5 - 5 =
    # -9). N2 = N(5) with 5 new tokens needs ceil(10/10) = 1 <= 1 real free block, but 1 > -9 -> break.
    b = Bed(backend, blocks=3)
    g0, g1 = b.gen(0, 10, max_new=50), b.gen(1, 10, max_new=50)
    n2 = b.new(2, 5, max_new=5)
    assert b.kv.num_free_blocks == 1
    assert [b.kv.get_remaining_blocks_to_completion(r) for r in (g0, g1, n2)] == [5, 5, 1]
    assert b.capacity(GNE, [g0, g1, n2]) == ([0, 1], [], [])
    assert b.capacity(GNE, [n2]) == ([2], [], [])  # alone it fits: the generations took the room


def test_gne_available_blocks_include_cached_free_blocks(backend):
    # §2.6 getNumFreeBlocksPerWindowSize / README pin 7: cached-but-unreferenced blocks count as
    # free. Reuse on, 3 blocks. R = N(20 ones) with 1 new token completes in its context step; its
    # sequence (20 KV tokens = 2 full blocks) is stored for reuse on completion and released: 2
    # cached blocks, all 3 free. N1 = N(25 twos) + 5 new needs ceil(30/10) = 3 <= 3 -> admitted.
    b = Bed(backend, blocks=3, reuse=True)
    r = b.new(9, 20, max_new=1)
    b.step(r)
    assert r.state == S.GENERATION_COMPLETE
    assert b.kv.num_cached_blocks == 2 and b.kv.num_free_blocks == 3
    assert b.capacity(GNE, [b.new(1, [2] * 25, max_new=5)]) == ([1], [], [])


def test_gne_count_limit_stops_pass_1(backend):
    # §6 item 5, pass 1. max_num_requests 2, [N0, G1, G2, G3]: pass 1: N0 -> pending, G1 and G2
    # admitted (count 2), G3: count full -> classification stops (G3 is not admitted although
    # generations need no check). Pass 2: N0: count full -> break. Output: generations only.
    b = Bed(backend, blocks=20)
    reqs = [b.new(0, 10), b.gen(1, 10), b.gen(2, 10), b.gen(3, 10)]
    assert b.capacity(GNE, reqs, max_num_requests=2) == ([1, 2], [], [])


def test_gne_block_break_only_exits_the_current_list(backend):
    # §6 item 5, pass 2. 3 blocks. Disagg list [D0, D1], context list [N2]:
    # D0 (prompt 30 + 10 new): floor(30/10) + (ceil(40/10) - 3) = 4 > 3 -> break out of the disagg
    # list, so D1 (2 blocks, would fit) is not considered; the context list is still entered:
    # N2 (10 + 10: 2 blocks) <= 3 -> admitted.
    b = Bed(backend, blocks=3)
    reqs = [b.with_state(0, 30, S.DISAGG_GENERATION_INIT), b.with_state(1, 10, S.DISAGG_GENERATION_INIT), b.new(2, 10)]
    assert [b.kv.get_remaining_blocks_to_completion(r) for r in reqs] == [4, 2, 2]
    assert b.capacity(GNE, reqs) == ([2], [], [])


def test_gne_count_break_in_disagg_list_then_context_list(backend):
    # §6 item 5, pass 2. max_num_requests 1: D0 admitted; D1 hits the count -> break (disagg list);
    # the context list is entered and breaks at N2 too.
    b = Bed(backend, blocks=20)
    reqs = [b.with_state(0, 10, S.DISAGG_GENERATION_INIT), b.with_state(1, 10, S.DISAGG_GENERATION_INIT), b.new(2, 10)]
    assert b.capacity(GNE, reqs, max_num_requests=1) == ([], [0], [])


def test_gne_disagg_list_goes_before_earlier_contexts(backend):
    # §2.4 pass 2 order: pendingDisagg, then pending. 2 blocks, [N0, D1], each needs 2 blocks:
    # D1 is tried first and takes both; N0: 2 > 0 -> break.
    b = Bed(backend, blocks=2)
    reqs = [b.new(0, 10), b.with_state(1, 10, S.DISAGG_GENERATION_INIT)]
    assert b.capacity(GNE, reqs) == ([], [1], [])


def test_gne_peft_only_failure_skips_and_block_failure_breaks(backend):
    # §6 item 6. 15 pages, 10 per task; plenty of blocks. [N0 lora 1, N1 lora 2, N2 lora 1, N3]:
    # N0: 10 <= 15 (5 left). N1: new task, 10 > 5, blocks fine -> skip, continue. N2: task 1 is
    # known -> 0 pages. N3: no LoRA -> 0 pages.
    b = Bed(backend, blocks=20)
    reqs = [b.new(0, 10, lora_task_id=1), b.new(1, 10, lora_task_id=2), b.new(2, 10, lora_task_id=1), b.new(3, 10)]
    assert b.capacity(GNE, reqs, peft=ts.PeftCacheManager(10, 15)) == ([0, 2, 3], [], [])
    # Block failure instead: 3 blocks, [N(30) + 10 new = 4 blocks, N(10) = 2 blocks] -> break at
    # the first, the second (which fits) is not considered.
    b2 = Bed(backend, blocks=3)
    reqs = [b2.new(0, 30), b2.new(1, 10)]
    assert b2.capacity(GNE, reqs) == ([], [], [])


def test_gne_generations_claim_pages_without_a_check(backend):
    # §2.7: generations pre-claim pages with no check. 15 pages, 10 per task: G0 (lora 1) and G1
    # (lora 2) claim 20 -> available 15 - 20 = -5. N2 (lora 1: 0 pages) and N3 (no LoRA: 0 pages):
    # 0 <= -5 is false -> PEFT-only failure -> both skipped (continue, no break).
    b = Bed(backend, blocks=20)
    reqs = [b.gen(0, 10, lora_task_id=1), b.gen(1, 10, lora_task_id=2), b.new(2, 10, lora_task_id=1), b.new(3, 10)]
    assert b.capacity(GNE, reqs, peft=ts.PeftCacheManager(10, 15)) == ([0, 1], [], [])
    # One generation claims 10: N2 shares its task (0 pages), N3 needs none: 0 <= 5 -> admitted.
    reqs = [reqs[0], reqs[2], reqs[3]]
    assert b.capacity(GNE, reqs, peft=ts.PeftCacheManager(10, 15)) == ([0, 2, 3], [], [])


def test_gne_chunked_context_in_progress_is_rechecked_with_its_own_blocks(backend):
    # §2.4 consequences: an in-progress chunked context is pending again and passes `enough` with
    # what it holds subtracted. C0 = N(30) + 10 new after a first chunk of 10 holds 3 blocks:
    # remaining = (ceil(40/10) - 3) = 1. 4 blocks -> 1 free -> admitted.
    b = Bed(backend, blocks=4)
    c0 = b.chunked(0, 30, first_chunk=10)
    assert b.kv.num_free_blocks == 1
    assert b.kv.get_remaining_blocks_to_completion(c0) == 1
    assert b.capacity(GNE, [c0]) == ([0], [], [])


# ================================================================================= STATIC_BATCH (§2.4)


def test_static_batch_admits_nothing_new_while_a_generation_runs(backend):
    # §6 item 7. [G0, N1], plenty of blocks: pass 1 admits G0 -> pass 2 is skipped, N1 waits.
    b = Bed(backend, blocks=20)
    g0, n1, n2 = b.gen(0, 10), b.new(1, 10), b.new(2, 10)
    assert b.capacity(STATIC, [g0, n1]) == ([0], [], [])
    assert b.capacity(GNE, [g0, n1]) == ([0, 1], [], [])  # GNE, same list: N1 admitted
    # With no generation in the list, STATIC admits as many as fit.
    assert b.capacity(STATIC, [n1, n2]) == ([1, 2], [], [])


def test_static_batch_ignores_generations_outside_the_window(backend):
    # §6 item 7: only generations *scheduled in pass 1* block admission; a GENERATION_COMPLETE
    # request is not schedulable, so it does not.
    b = Bed(backend, blocks=20)
    reqs = [b.with_state(0, 10, S.GENERATION_COMPLETE), b.new(1, 10)]
    assert b.capacity(STATIC, reqs) == ([1], [], [])


# =============================================================================== max requests (§2.2)


@pytest.mark.parametrize("policy", [MU, GNE, STATIC])
def test_max_requests_path_without_kv_cache(backend, policy):
    # §2.1: no KV cache manager -> MaxRequestsScheduler whatever the policy. §2.2: skip what the
    # window [CONTEXT_INIT, GENERATION_COMPLETE) excludes (no disagg exception: D2 is out; so are
    # ENCODER_INIT E3 and GENERATION_COMPLETE C4); take context-init (N0, X5 =
    # DISAGG_CONTEXT_INIT_AND_TRANS, N6) and generation-in-progress (G1) until the count is full.
    # No blocks are checked: N0 has a 5000-token prompt.
    b = Bed(backend, kv=False)
    reqs = [b.new(0, 5000), b.with_state(1, 10, S.GENERATION_IN_PROGRESS), b.with_state(2, 10, S.DISAGG_GENERATION_INIT),
            b.with_state(3, 10, S.ENCODER_INIT), b.with_state(4, 10, S.GENERATION_COMPLETE),
            b.with_state(5, 10, S.DISAGG_CONTEXT_INIT_AND_TRANS), b.new(6, 10)]
    assert b.capacity(policy, reqs, max_num_requests=8) == ([0, 1, 5, 6], [], [])
    assert b.capacity(policy, reqs, max_num_requests=3) == ([0, 1, 5], [], [])


# ========================================================================= reuse skipping (§2.3, item 8)


def test_reuse_skipping_delays_a_duplicate_prompt(backend):
    # §2.3 step B, §6 item 8. Reuse on, empty cache. A and B = 25 ones, C = 25 twos. Keys (all
    # tokens through the first uncached full block): A, B -> ten 1s; C -> ten 2s. A claims its key,
    # B finds it claimed -> skipped; C admitted. STATIC_BATCH does no skipping at all.
    b = Bed(backend, blocks=20, reuse=True)
    reqs = [b.new(0, 25, max_new=5), b.new(1, 25, max_new=5), b.new(2, [2] * 25, max_new=5)]
    assert b.capacity(GNE, reqs) == ([0, 2], [], [])
    assert b.capacity(MU, reqs) == ([0, 2], [], [])
    assert b.capacity(STATIC, reqs) == ([0, 1, 2], [], [])


def test_reuse_skip_key_ignores_partial_tail_and_includes_lora(backend):
    # §2.3 key: full blocks only; the LoRA id is part of the key.
    # A = ten 1s + five 2s, B = ten 1s + five 3s: both keys = ten 1s (partial tail ignored) -> B skipped.
    # C = five 1s: no full block -> no key -> never skipped; D = same as C -> admitted too.
    # E = ten 1s + five 2s with LoRA 7: key (ten 1s, 7) differs from A's -> admitted.
    b = Bed(backend, blocks=20, reuse=True)
    reqs = [b.new(0, [1] * 10 + [2] * 5, max_new=5), b.new(1, [1] * 10 + [3] * 5, max_new=5),
            b.new(2, [1] * 5, max_new=5), b.new(3, [1] * 5, max_new=5),
            b.new(4, [1] * 10 + [2] * 5, max_new=5, lora_task_id=7)]
    assert b.capacity(GNE, reqs) == ([0, 2, 3, 4], [], [])


def test_reuse_skip_key_runs_through_the_first_uncached_block(backend):
    # §2.3 key = all tokens through the first uncached full block. P = eleven 1s ran its context:
    # the full blocks of its first 10 tokens (one block of ten 1s) are cached.
    # A = 1s*10 + 2s*10 + 4s*5, B = 1s*10 + 2s*10 + 5s*5 -> both keys = 1s*10 + 2s*10 -> B skipped.
    # C = 1s*10 + 3s*10 -> key 1s*10 + 3s*10 -> admitted. (GNE: P, a generation, is admitted first.)
    b = Bed(backend, blocks=20, reuse=True)
    p = b.gen(9, 11, max_new=5)
    a = b.new(0, [1] * 10 + [2] * 10 + [4] * 5, max_new=5)
    bb = b.new(1, [1] * 10 + [2] * 10 + [5] * 5, max_new=5)
    c = b.new(2, [1] * 10 + [3] * 10, max_new=5)
    key = b.kv.find_new_context_block(a)
    assert key[0].tolist() == [1] * 10 + [2] * 10 and key[1] is None
    assert b.capacity(GNE, [p, a, bb, c]) == ([9, 0, 2], [], [])


def test_reuse_step_a_chunked_context_in_progress_claims_its_key(backend):
    # §2.3 step A: a context past its first chunk contributes its key before the loop. K = thirty
    # 1s ran a first chunk of 10 (nothing is stored until its last chunk): key = ten 1s. A = 25 1s
    # has the same key -> skipped; B = 25 2s admitted. K itself is not first-chunk -> never skipped.
    b = Bed(backend, blocks=20, reuse=True)
    k = b.chunked(0, 30, first_chunk=10, max_new=5)
    reqs = [k, b.new(1, 25, max_new=5), b.new(2, [2] * 25, max_new=5)]
    assert b.capacity(GNE, reqs) == ([0, 2], [], [])
    assert b.capacity(MU, reqs) == ([0, 2], [], [])


def test_mu_retry_after_a_pause_skips_the_request_that_claimed_its_key(backend):
    # §6 item 8 (claim side effect) with §2.5 step 5e: a retry re-enters the loop body, so step b
    # runs again. 2 blocks, reuse on. G2 = G(10 twos) holds 1 block -> 1 free.
    # [A = N(20 ones): needs 2, B = N(10 ones): needs 1, G2]:
    #   A: claims key "ten 1s"; 2 > 1 fails -> pause G2 (snapshot free 2), end = 2; retry A: its key
    #   is now claimed (by itself) -> skipped. B: same key -> skipped. i = 2 = end.
    # So G2 is paused and nothing is admitted (TensorRT-LLM's loop does the same: see report).
    b = Bed(backend, blocks=2, reuse=True)
    g2 = b.gen(2, [2] * 10, max_new=5)
    a, bb = b.new(0, 20, max_new=5), b.new(1, 10, max_new=5)
    assert b.kv.num_free_blocks == 1
    assert b.capacity(MU, [a, bb, g2]) == ([], [], [2])
    # Reuse off, same situation: A is admitted after the pause.
    b2 = Bed(backend, blocks=2)
    g2 = b2.gen(2, [2] * 10, max_new=5)
    a, bb = b2.new(0, 20, max_new=5), b2.new(1, 10, max_new=5)
    assert b2.capacity(MU, [a, bb, g2]) == ([0], [], [2])


# ======================================================================== request fields (items 9-11)


def test_first_context_chunk_is_relative_to_the_reused_prefix(backend):
    # §6 item 9. Reuse on, 4 blocks. P = twenty 1s ran its context: it holds 2 blocks and stored the
    # full blocks of its first 19 tokens (one block). B = twenty-five 1s is added to the cache:
    # it reuses that block (prepopulated 10, position 10) and takes 2 new ones -> 0 free.
    # B is still on its *first* chunk (position == prepopulated), so MAX_UTILIZATION does not count
    # it as started. [P, B]: P needs ceil(21/10) - ceil(20/10) = 1 > 0 -> search backwards: B not
    # started, P started -> P pauses itself. (Comparing with 0 would pause B and admit P.)
    b = Bed(backend, blocks=4, reuse=True)
    p = b.gen(0, 20, max_new=5)
    bb = b.new(1, 25, max_new=5)
    b.kv.add_sequence(1, 25, 1, bb)
    assert (bb.prepopulated_prompt_len, bb.context_current_position) == (10, 10)
    assert bb.is_first_context_chunk
    assert b.kv.num_free_blocks == 0
    # G1 estimates subtract nothing reused: floor(25/10) + 1 partial block.
    assert b.kv.get_needed_blocks_one_step(bb) == 3
    assert b.capacity(MU, [p, bb]) == ([], [], [0])


def test_remaining_blocks_use_floor_for_the_prompt_and_ceil_for_the_total(backend):
    # §6 item 10, §2.6. Prompt 15, 10 new, tpb 10: ctx = floor(15/10) = 1, total = ceil(25/10) = 3,
    # gen = 2. Beam 1: 1 + 2 = 3. Beam 2: 1 + 2 * 2 = 5 (a ceil prompt count would give 2 + 1 * 2 = 4).
    # After add_sequence(15) holds 2 >= 1 blocks: (3 - 2) * 1 = 1.
    # The spec's example: prompt 10, 80 new, window 90 -> 1 + 8 = 9.
    b = Bed(backend, blocks=20)
    r1, r2 = b.new(0, 15), b.new(1, 15, beam_width=2)
    assert b.kv.get_remaining_blocks_to_completion(r1) == 3
    assert b.kv.get_remaining_blocks_to_completion(r2) == 5
    b.kv.add_sequence(0, 15, 1, r1)
    assert b.kv.get_remaining_blocks_to_completion(r1) == 1
    b90 = Bed(backend, blocks=20, max_seq_len=90)
    assert b90.kv.get_remaining_blocks_to_completion(b90.new(0, 10, max_new=80)) == 9
    # GNE with 4 free blocks: the beam-2 request (5) does not fit, the beam-1 one (3) does.
    b4 = Bed(backend, blocks=4)
    assert b4.capacity(GNE, [b4.new(0, 15, beam_width=2)]) == ([], [], [])
    assert b4.capacity(GNE, [b4.new(1, 15)]) == ([1], [], [])


def test_needed_blocks_use_the_kv_token_count_and_draft_tokens(backend):
    # §6 item 11. G(10): the request has 11 tokens, its KV sequence 10. Next step: 10 -> 11 tokens:
    # ceil(11/10) - ceil(10/10) = 1 (the request-side count would give ceil(12/10) - ceil(11/10) = 0).
    b = Bed(backend, blocks=20)
    g = b.gen(0, 10)
    assert (g.get_num_tokens(0), b.kv.get_sequence_num_tokens(0)) == (11, 10)
    assert b.kv.get_needed_blocks_one_step(g) == 1
    # G(12) with 8 draft tokens: add = min(8 + 1, 10 new - 0 generated) = 9: 12 -> 21: 3 - 2 = 1 block,
    # though one step appends a single token. Without drafts: 12 -> 13: 0. With only 3 new tokens
    # left: add = min(9, 3) = 3: 12 -> 15: 0.
    g12 = b.gen(1, 12)
    assert b.kv.get_needed_blocks_one_step(g12) == 0
    g12.set_num_draft_tokens(8)
    assert b.kv.get_needed_blocks_one_step(g12) == 1
    g3 = b.gen(2, 12, max_new=3)
    g3.set_num_draft_tokens(8)
    assert b.kv.get_needed_blocks_one_step(g3) == 0


def test_mu_draft_tokens_can_cost_a_pause(backend):
    # §6 item 11 in the scheduler: G(12) holds 2 of 2 blocks. Without drafts it needs 0 -> fits;
    # with 8 drafts it needs 1 > 0 -> it pauses itself.
    b = Bed(backend, blocks=2)
    g = b.gen(0, 12)
    assert b.capacity(MU, [g]) == ([0], [], [])
    g.set_num_draft_tokens(8)
    assert b.capacity(MU, [g]) == ([], [], [0])


# ============================================================================ output order (item 17)


def test_capacity_output_is_in_admission_order(backend):
    # §6 item 17 / README pin 4. List [N0, G1, N2, G3], plenty of blocks:
    # MAX_UTILIZATION admits in list order; GNE gives pass-1 generations first, then pass-2
    # contexts; STATIC_BATCH admits the generations only.
    b = Bed(backend, blocks=20)
    reqs = [b.new(0, 10), b.gen(1, 10), b.new(2, 10), b.gen(3, 10)]
    assert b.capacity(MU, reqs) == ([0, 1, 2, 3], [], [])
    assert b.capacity(GNE, reqs) == ([1, 3, 0, 2], [], [])
    assert b.capacity(STATIC, reqs) == ([1, 3], [], [])


def test_full_step_micro_sorts_the_capacity_output_by_lora(backend):
    # §6 item 17: GNE fitting [G1 lora 1, G3, N0 lora 2, N2] (generations first); the micro-batch
    # scheduler then sorts each output by LoRA task id, no LoRA first: context [N2, N0],
    # generation [G3, G1].
    b = Bed(backend, blocks=20)
    reqs = [b.new(0, 10, lora_task_id=2), b.gen(1, 10, lora_task_id=1), b.new(2, 10), b.gen(3, 10)]
    lst = ts.RequestList(b.t)
    for r in reqs:
        lst.append(r)
    out = b.scheduler(GNE).schedule(lst)
    assert b.ids(out.fitting) == [1, 3, 0, 2]
    assert b.ids(out.context) == [2, 0]
    assert b.ids(out.generation) == [3, 1]
    assert b.ids(out.paused) == [] and b.ids(out.fitting_disagg_gen_init) == []


def test_full_step_passes_disagg_requests_only_to_the_disagg_output(backend):
    # §2.1: disagg-generation-init requests go to their own list and are not micro-scheduled.
    b = Bed(backend, blocks=20)
    lst = ts.RequestList(b.t)
    for r in [b.with_state(0, 10, S.DISAGG_GENERATION_INIT), b.new(1, 10)]:
        lst.append(r)
    out = b.scheduler(GNE).schedule(lst)
    assert (b.ids(out.fitting), b.ids(out.fitting_disagg_gen_init)) == ([1], [0])
    assert (b.ids(out.context), b.ids(out.generation)) == ([1], [])


def test_request_list_inserts_by_priority_fifo_among_equals(backend):
    # §1.3 insertRequestInOrder: descending priority, after every request of priority >= its own.
    b = Bed(backend, kv=False)
    lst = ts.RequestList(b.t)
    for rid, prio in [(0, 0.5), (1, 0.5), (2, 0.9), (3, 0.1), (4, 0.5), (5, 0.9)]:
        lst.insert_by_priority(b.new(rid, 10, priority=prio))
    assert lst.request_ids().tolist() == [2, 5, 0, 1, 4, 3]
