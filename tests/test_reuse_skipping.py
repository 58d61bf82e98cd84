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
