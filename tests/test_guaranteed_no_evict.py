"""tests/test_guaranteed_no_evict.py: GUARANTEED_NO_EVICT and STATIC_BATCH, one hand-built situation per subtlety.

Twins: ext/policies/guaranteed_no_evict.cpp, tllm_sched/policies/guaranteed_no_evict.py, tllm_sched/naive/guaranteed_no_evict.py.

Set-up and notation (G(p), N(p)): tests/utils.py `CapacityBed`. Every expected id list is derived
by hand in the comment beside it; each test runs on every backend (the `backend` fixture).
"""

from __future__ import annotations

import tllm_sched as ts

from utils import CapacityBed as Bed, GNE, S, STATIC


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
