"""tests/test_reuse_skipping.py: reuse skipping (scheduler.md §2.3, §6 item 8): a new request waits while another computes its uncached prefix.

Twins: ext/policies/reuse_skipping.cpp, tllm_sched/policies/reuse_skipping.py, tllm_sched/naive/reuse_skipping.py.

Set-up and notation (G(p), N(p)): tests/utils.py `CapacityBed`. Every expected id list is derived
by hand in the comment beside it; each test runs on every backend (the `backend` fixture).
"""

from __future__ import annotations

from utils import CapacityBed as Bed, GNE, MU, STATIC


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


# ============================================ pass 2 as one call (the batched Python scheduler)
# With running generations and contexts only (no PEFT), the Python backend runs GUARANTEED_NO_EVICT
# as one C++ call (`no_evict_split_fitting`, the C++ policy's loop); MAX_UTILIZATION with reuse too
# (`max_utilization_fitting`). design.md, "Sequential loops in one call". Set-up shared below:
# 10 tokens per block, reuse on.
#   G = G(15 9s), max_new 15: holds 2 blocks; 30 tokens at completion = 3 blocks -> needs 1 more.
#   K = 30 1s that ran a first chunk of 10 (context in progress: holds its prompt's 3 blocks;
#       nothing stored yet): key "ten 1s"; 35 tokens at completion = 4 blocks -> needs 1 more.
#   A = N(25 1s): key "ten 1s", claimed by K in step A -> skipped. Needs 3 (30 tokens).
#   B = N(25 2s), C = N(25 3s): own keys; need 3 each. D = N(5 4s), max_new 1: no full block,
#   no key; needs 1.


def _pass2_bed(backend, blocks):
    b = Bed(backend, blocks=blocks, reuse=True)
    g = b.gen(9, [9] * 15, max_new=15)
    k = b.chunked(0, 30, first_chunk=10, max_new=5)
    a, bb = b.new(1, 25, max_new=5), b.new(2, [2] * 25, max_new=5)
    c, d = b.new(3, [3] * 25, max_new=5), b.new(4, [4] * 5, max_new=1)
    return b, [g, k, a, bb, c, d]


def test_no_evict_pass2_skips_and_stops_head_of_line(backend):
    # 12 blocks: 12 - 2 (G) - 3 (K) = 7 free; G reserves its 1 more -> 6 available.
    # K (step A's claim, never skipped itself): 1 <= 6 -> admitted, 5 left. A: skipped (K claimed
    # "ten 1s"). B: 3 <= 5 -> admitted, 2 left. C: 3 > 2 -> head-of-line: the list stops, so D
    # (needs 1, would fit) waits. Fitting: generations first, then contexts in order.
    b, reqs = _pass2_bed(backend, blocks=12)
    assert b.kv.num_free_blocks == 7
    assert b.capacity(GNE, reqs) == ([9, 0, 2], [], [])
    # The same list with the generation last: pass 1 still comes first.
    assert b.capacity(GNE, reqs[1:] + reqs[:1]) == ([9, 0, 2], [], [])


def test_no_evict_pass2_count_room(backend):
    # As above, max_num_requests 2: G takes one; K the other; A is skipped before the count check
    # (step B runs first, as in C++); B finds the count reached -> the list stops.
    b, reqs = _pass2_bed(backend, blocks=12)
    assert b.capacity(GNE, reqs, max_num_requests=2) == ([9, 0], [], [])
    # max_num_requests 1: the generation fills it: pass 1 cuts the list, no context is admitted.
    assert b.capacity(GNE, reqs, max_num_requests=1) == ([9], [], [])


def test_no_evict_pass2_without_step_a_claim(backend):
    # 20 blocks (15 free, 14 available after G). Without K in the list, nothing claims "ten 1s"
    # before A: A claims it and is admitted (3), then B, C (3 each) and D (1): 10 <= 14.
    b, reqs = _pass2_bed(backend, blocks=20)
    assert b.capacity(GNE, [r for r in reqs if r.request_id != 0]) == ([9, 1, 2, 3, 4], [], [])
    # With K: A is skipped, everyone else fits (K 1 + B 3 + C 3 + D 1 = 8 <= 14).
    assert b.capacity(GNE, reqs) == ([9, 0, 2, 3, 4], [], [])


def test_pass2_primitives_decline_what_pass_1_decides():
    # The one-call GNE step takes running generations and contexts only, and the generations must
    # leave room under the count limit: otherwise it declines (None) before any claim, and the
    # Python scheduler takes its general path.
    import numpy as np
    import tllm_sched as ts
    from tllm_sched import _core

    b, reqs = _pass2_bed("cpp", blocks=12)
    slots = np.array([r.slot for r in reqs], dtype=np.int32)
    fitting, n_gen = _core.no_evict_split_fitting(b.kv, slots, 8)
    assert b.ids(fitting) == [9, 0, 2] and n_gen == 1
    walks = b.kv.num_key_walks
    assert _core.no_evict_split_fitting(b.kv, slots, 1) is None
    disagg = b.with_state(7, 5, ts.LlmRequestState.DISAGG_GENERATION_INIT)
    assert _core.no_evict_split_fitting(b.kv, np.append(slots, np.int32(disagg.slot)), 8) is None
    assert b.kv.num_key_walks == walks  # declined before any key question
    # Only generations: nothing for pass 2, no key question.
    assert b.ids(_core.no_evict_split_fitting(b.kv, slots[:1], 8)[0]) == [9] and b.kv.num_key_walks == walks
    # MAX_UTILIZATION's loop: (fitting, disagg, paused) slots, as the C++ policy decides.
    fit, disagg_fit, paused, n_gen = _core.max_utilization_fitting(b.kv, slots, 8)
    empty = np.zeros(0, dtype=np.int32)
    assert (b.ids(fit), b.ids(empty if disagg_fit is None else disagg_fit),
            b.ids(empty if paused is None else paused)) == b.capacity(MU, reqs)
    # The generation listed first: the split is the count of leading generations (1: G), then contexts.
    assert n_gen == 1 and b.ids(fit)[0] == 9
    # ... and otherwise the fitting list's split as two lists, both parts in list order. With the
    # generation listed last, one step's blocks: K holds its prompt's (0 more), A skipped, B 3, C 3,
    # D 1 (7 of 7 free), G's next token fits its 2 blocks (0): contexts K, B, C, D, then G.
    fit, _, _, (gens, contexts) = _core.max_utilization_fitting(b.kv, np.append(slots[1:], slots[:1]), 8)
    assert (b.ids(fit), b.ids(gens), b.ids(contexts)) == ([0, 2, 3, 4, 9], [9], [0, 2, 3, 4])
    # A fitting entry that is neither (a generation to complete): no split.
    reqs[0].set_state(ts.LlmRequestState.GENERATION_TO_COMPLETE)
    fit, _, _, split = _core.max_utilization_fitting(b.kv, slots, 8)
    assert 9 in b.ids(fit) and split is None
