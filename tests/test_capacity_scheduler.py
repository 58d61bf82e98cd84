"""tests/test_capacity_scheduler.py: the capacity scheduler around its policies: request fields
(scheduler.md §6 items 9-11) and output order (item 17).

Twins: ext/capacity_scheduler.cpp, tllm_sched/capacity_scheduler.py. The policies have their
own files (tests/test_<policy>.py beside ext/policies/<policy>.cpp); items 12-16 are in
test_micro_batch_scheduler.py and test_chunking.py.

Set-up and notation (G(p), N(p)): tests/utils.py `CapacityBed`. Every expected id list is derived
by hand in the comment beside it; each test runs on every backend (the `backend` fixture).
"""

from __future__ import annotations

import tllm_sched as ts

from utils import CapacityBed as Bed, GNE, MU, S, STATIC


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


def test_needed_blocks_use_the_kv_token_count_and_draft_tokens():
    # §6 item 11. G(10): the request has 11 tokens, its KV sequence 10. Next step: 10 -> 11 tokens:
    # ceil(11/10) - ceil(10/10) = 1 (the request-side count would give ceil(12/10) - ceil(11/10) = 0).
    b = Bed(blocks=20)  # a cache question: no scheduler, no backend
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


def test_request_list_inserts_by_priority_fifo_among_equals():
    # §1.3 insertRequestInOrder: descending priority, after every request of priority >= its own.
    b = Bed(kv=False)  # the C++ list alone: no scheduler, no backend
    lst = ts.RequestList(b.t)
    for rid, prio in [(0, 0.5), (1, 0.5), (2, 0.9), (3, 0.1), (4, 0.5), (5, 0.9)]:
        lst.insert_by_priority(b.new(rid, 10, priority=prio))
    assert lst.request_ids().tolist() == [2, 5, 0, 1, 4, 3]
