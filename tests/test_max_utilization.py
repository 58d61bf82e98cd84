"""tests/test_max_utilization.py: MAX_UTILIZATION, one hand-built situation per subtlety (scheduler.md §6 items 1-7).

Twins: ext/policies/max_utilization.cpp, tllm_sched/policies/max_utilization.py, tllm_sched/naive/max_utilization.py.

Set-up and notation (G(p), N(p)): tests/utils.py `CapacityBed`. Every expected id list is derived
by hand in the comment beside it; each test runs on every backend (the `backend` fixture).
"""

from __future__ import annotations

import tllm_sched as ts

from utils import CapacityBed as Bed, MU, S


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
