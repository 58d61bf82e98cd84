"""tests/test_fused.py: the fused single pass (SchedulerConfig(fused=True)), one hand-built case per rule.

Twins: ext/policies/fused.cpp, tllm_sched/policies/fused.py, tllm_sched/naive/fused.py. The first
three tests are the worked examples of TensorRT-LLM's scheduler/design.md section 4 ("Behavior
Changes"), each run in both modes so the difference the document describes is what is asserted;
the rest pin one rule each (design.md, "The fused mode", lists them with these tests). Every
expected list is derived by hand in the comment beside it; every test runs on every backend.

Set-up and notation: tests/utils.py `CapacityBed` (10 tokens per block). G(p): a generating request
whose p-token context ran (holds ceil(p/10) blocks); N(p): a new p-token context.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig

import test_differential as diff
from utils import GNE, MU, STATIC, CapacityBed, S

FCFS = ChunkingConfig("FIRST_COME_FIRST_SERVED", 1)


def run(bed, policy, reqs, *, fused, inflight=None, peft=None, **cfg):
    """One full step over the list `reqs` (in that order): a dict of id lists and num_fitting."""
    lst = ts.RequestList(bed.t)
    for r in reqs:
        lst.append(r)
    sched = bed.scheduler(policy, peft=peft, fused=fused, **cfg)
    o = sched.schedule(lst, None if inflight is None else np.array(inflight, dtype=np.int64))
    return {"fitting": bed.ids(o.fitting), "disagg": bed.ids(o.fitting_disagg_gen_init), "paused": bed.ids(o.paused),
            "context": bed.ids(o.context), "generation": bed.ids(o.generation), "num_fitting": o.num_fitting}


def modes(backend, build, policy, bed=None, **cfg):
    """(two-stage result, fused result), each on a fresh CapacityBed(**bed) built by `build`."""
    return tuple(run(b, policy, build(b), fused=f, **cfg)
                 for f in (False, True) for b in [CapacityBed(backend, **(bed or {}))])


# ================================================================= design.md 4.1.1 a: MAX_UTILIZATION pauses fewer


def test_mu_pause_avoidance_example(backend):
    # Token budget 100, no chunking, 14 blocks. Old = G(15) holds 2 blocks (12 free) and needs 0 more;
    # A = N(30), B = N(80), C = N(20), D = N(10) need 3, 8, 2, 1 blocks for one step. List [A, B, C, D, Old].
    # Two-stage: capacity (blocks only) takes A (3 <= 12), B (11 <= 12); C: 13 > 12 -> pause the last
    # started request, Old (14 free), retry C (13 <= 14); D (14 <= 14). Fitting [A, B, C, D], paused [Old].
    # Micro-batch: A 30 tokens; B 30 + 80 = 110 > 100 -> break. Scheduled [A].
    # Fused: A (blocks 3, tokens 30); B: blocks 11 <= 12 but 110 > 100 tokens -> stop (pausing frees
    # blocks, not tokens). C and D are never reached, Old is not paused. Fitting [A], scheduled [A].
    def build(b):
        old = b.gen(9, 15)
        reqs = [b.new(1, 30), b.new(2, 80), b.new(3, 20), b.new(4, 10), old]
        assert b.kv.num_free_blocks == 12
        assert [b.kv.get_needed_blocks_one_step(r) for r in reqs] == [3, 8, 2, 1, 0]
        return reqs

    two, fused = modes(backend, build, MU, bed={"blocks": 14}, max_num_tokens=100)
    assert two == {"fitting": [1, 2, 3, 4], "disagg": [], "paused": [9], "context": [1], "generation": [],
                   "num_fitting": 4}
    assert fused == {"fitting": [1], "disagg": [], "paused": [], "context": [1], "generation": [], "num_fitting": 1}


# ================================================================= design.md 4.1.1 b: GNE's second pass, lighter state


def _gen_ctx_disagg(b):
    """[Gen_1..Gen_12, Ctx_X, Disagg_Y, Gen_13, Disagg_Z]: G(5) with 7 draft tokens each (1 + 7 = 8
    budget tokens), Ctx_X = N(4) (chunked), Y and Z = 5-token disagg-generation-init requests."""
    gens = [b.gen(i, 5) for i in range(1, 14)]
    for g in gens:
        g.set_num_draft_tokens(7)
    x = b.new(100, 4)
    y = b.with_state(200, 5, S.DISAGG_GENERATION_INIT)
    z = b.with_state(300, 5, S.DISAGG_GENERATION_INIT)
    # Blocks to completion: 1 more per generation, 2 for each of X, Y, Z.
    assert [b.kv.get_remaining_blocks_to_completion(r) for r in (gens[0], x, y, z)] == [1, 2, 2, 2]
    return [*gens[:12], x, y, gens[12], z]


def test_gne_second_pass_example(backend):
    # Token budget 100, chunking on, plenty of blocks (the document's example verbatim).
    # Two-stage: pass 1 admits Gen_1..Gen_13; pass 2 admits Disagg_Y, Disagg_Z, then Ctx_X. Micro-batch
    # over [Gen_1..Gen_13, Ctx_X]: 12 x 8 = 96; Gen_13 96 + 8 = 104 > 100 -> break; Ctx_X never reached.
    # Fused: pass 1 admits Gen_1..Gen_12 (96), classifies Ctx_X and Disagg_Y, stops at Gen_13 (104 > 100):
    # Disagg_Z is never reached. Pass 2: Disagg_Y (blocks), then Ctx_X: chunked, 4 tokens <= 100 - 96 fit
    # whole. Ctx_X runs (100/100 tokens) where two-stage dropped it.
    two, fused = modes(backend, _gen_ctx_disagg, GNE, bed={"blocks": 200}, max_num_tokens=100,
                       max_num_requests=32, chunking=FCFS)
    gens = list(range(1, 14))
    assert two == {"fitting": [*gens, 100], "disagg": [200, 300], "paused": [], "context": [],
                   "generation": gens[:12], "num_fitting": 14}
    assert fused == {"fitting": [*gens[:12], 100], "disagg": [200], "paused": [], "context": [100],
                     "generation": gens[:12], "num_fitting": 13}


def test_gne_second_pass_sees_the_blocks_of_the_unadmitted_generation(backend):
    # The same list with 27 blocks: the 13 generations hold 13 -> 14 free.
    # Two-stage: the 13 generations reserve 13 -> 1 left; Disagg_Y needs 2 -> break (disagg list);
    # Ctx_X needs 2 > 1 -> break. Only generations fit: Gen_1..Gen_12 run (budget), nobody else.
    # Fused: Gen_13 is never admitted, so 12 are reserved -> 2 left: Disagg_Y fits (0 left); Ctx_X
    # needs 2 > 0 -> break. Disagg_Y is admitted only in the fused mode.
    two, fused = modes(backend, _gen_ctx_disagg, GNE, bed={"blocks": 27}, max_num_tokens=100,
                       max_num_requests=32, chunking=FCFS)
    gens = list(range(1, 14))
    assert two["fitting"] == gens and two["disagg"] == [] and two["generation"] == gens[:12]
    assert fused["fitting"] == gens[:12] and fused["disagg"] == [200] and fused["context"] == []
    assert fused["generation"] == gens[:12] and fused["num_fitting"] == 12


# ================================================================= design.md 4.1.2: num_fitting


def test_num_fitting_counts_a_context_whose_chunk_came_out_zero(backend):
    # Budget 8, FCFS chunking with unit 4; G0..G5 (1 token each) and N(10).
    # The tracker counts the 6 generations (6 tokens) and takes the context tentatively (chunked
    # contexts are never over budget): num_fitting 7. finalize: the context's 10 tokens exceed the
    # 8 - 6 = 2 left -> FCFS chunk min(2, 10) = 2, rounded down to the unit 4 -> 0: dropped from the
    # output, still counted. 7 counted, 6 scheduled.
    def build(b):
        return [*(b.gen(i, 10) for i in range(6)), b.new(6, 10)]

    two, fused = modes(backend, build, GNE, bed={"blocks": 40}, max_num_tokens=8,
                       chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", 4))
    assert fused == {"fitting": [0, 1, 2, 3, 4, 5, 6], "disagg": [], "paused": [], "context": [],
                     "generation": [0, 1, 2, 3, 4, 5], "num_fitting": 7}
    assert two["num_fitting"] == 7 and two["context"] == []  # two-stage: len(fitting)


def test_num_fitting_is_the_fitting_length_in_the_two_stage_mode(backend):
    # Two-stage num_fitting is len(fitting) even when the micro-batch stage drops requests: budget 2,
    # G0..G3 admitted by capacity (4), the micro-batch stage takes 2.
    b = CapacityBed(backend, blocks=20)
    out = run(b, GNE, [b.gen(i, 10) for i in range(4)], fused=False, max_num_tokens=2)
    assert out["generation"] == [0, 1] and out["num_fitting"] == 4


# ================================================================= the rules, one test each


def test_requests_after_the_budget_break_take_no_slot(backend):
    # max_num_requests 13, budget 100, the example's requests as [Gen_1..Gen_12, Disagg_Y, Gen_13]:
    # two-stage pass 1 admits all 13 generations -> the count is full, pass 2 admits nobody. Fused:
    # Gen_13 is over budget -> 12 admitted; Disagg_Y (classified before the break) takes the 13th slot.
    def build(b):
        reqs = _gen_ctx_disagg(b)
        return [*reqs[:12], reqs[13], reqs[14]]

    two, fused = modes(backend, build, GNE, bed={"blocks": 200}, max_num_tokens=100, max_num_requests=13)
    assert two["disagg"] == [] and len(two["fitting"]) == 13
    assert fused["disagg"] == [200] and fused["fitting"] == list(range(1, 13))


def test_requests_after_the_budget_break_take_no_lora_pages(backend):
    # PEFT: 2 pages per task, 2 device pages. [G0 (no LoRA), D (disagg, task 2), G1 (task 1)], budget 1.
    # Two-stage: pass 1 admits G0, G1 (G1 claims task 1: 2 pages) -> 0 pages left; D needs 2 -> passed
    # over. Fused: G1 is over budget (1 + 1 > 1) -> never admitted, claims nothing; D gets the 2 pages.
    def build(b):
        return [b.gen(0, 10), b.with_state(2, 10, S.DISAGG_GENERATION_INIT, lora_task_id=2),
                b.gen(1, 10, lora_task_id=1)]

    peft = ts.PeftCacheManager(2, 2)
    two, fused = modes(backend, build, GNE, bed={"blocks": 40}, max_num_tokens=1, peft=peft)
    assert two["fitting"] == [0, 1] and two["disagg"] == [] and two["generation"] == [0]
    assert fused["fitting"] == [0] and fused["disagg"] == [2] and fused["generation"] == [0]


def test_batch_full_stops_the_loop_before_a_pause(backend):
    # MAX_UTILIZATION, max_batch_size 2, 5 blocks. Old = G(15) holds 2 (3 free), needs 0; A = N(10),
    # B = N(10) need 1 each, C = N(20) needs 2. List [A, B, C, Old].
    # Two-stage: A (1), B (2), C: 4 > 3 -> pause Old (5 free), C fits (4). Micro-batch: A, B (batch full).
    # Fused: A, B counted -> batch full after B: the loop stops; C is never tried, Old is not paused.
    def build(b):
        old = b.gen(9, 15)
        return [b.new(1, 10), b.new(2, 10), b.new(3, 20), old]

    two, fused = modes(backend, build, MU, bed={"blocks": 5}, max_batch_size=2)
    assert two["paused"] == [9] and two["fitting"] == [1, 2, 3] and two["context"] == [1, 2]
    assert fused == {"fitting": [1, 2], "disagg": [], "paused": [], "context": [1, 2], "generation": [],
                     "num_fitting": 2}


def test_mu_blocks_are_checked_before_the_budget(backend):
    # MAX_UTILIZATION, token budget 100, no chunking, 14 blocks (the list does not fit whole, so the
    # Python scheduler walks the tracker over the block-fitting prefix, then goes on request by
    # request from the first block failure). Old = G(15) holds 2
    # (12 free), needs 0; A = N(30), B = N(40), C = N(60) need 3, 4, 6. List [A, B, C, Old].
    # Both modes: A (3 blocks), B (7); C: 13 > 12 blocks -> pause Old (14 free), C's blocks fit (13).
    # Two-stage: fitting [A, B, C]; micro-batch A 30, B 70, C 130 > 100 -> [A, B].
    # Fused: the tracker sees C only once its blocks fit: 70 + 60 > 100 -> stop. Old stays paused.
    def build(b):
        old = b.gen(9, [9] * 15)
        reqs = [b.new(1, [1] * 30), b.new(2, [2] * 40), b.new(3, [3] * 60), old]
        assert b.kv.num_free_blocks == 12
        assert [b.kv.get_needed_blocks_one_step(r) for r in reqs] == [3, 4, 6, 0]
        return reqs

    two, fused = modes(backend, build, MU, bed={"blocks": 14}, max_num_tokens=100)
    assert two == {"fitting": [1, 2, 3], "disagg": [], "paused": [9], "context": [1, 2], "generation": [],
                   "num_fitting": 3}
    assert fused == {"fitting": [1, 2], "disagg": [], "paused": [9], "context": [1, 2], "generation": [],
                     "num_fitting": 2}


def test_gne_batch_full_in_pass_one_skips_pass_two(backend):
    # max_batch_size 2, [G0, G1, D (disagg)]: the tracker is full after G1, so the fused pass returns
    # before pass 2: D is not admitted (two-stage admits it: disagg requests bypass the micro-batch).
    def build(b):
        return [b.gen(0, 10), b.gen(1, 10), b.with_state(2, 10, S.DISAGG_GENERATION_INIT)]

    two, fused = modes(backend, build, GNE, bed={"blocks": 40}, max_batch_size=2)
    assert two["disagg"] == [2] and fused["disagg"] == []
    assert two["generation"] == fused["generation"] == [0, 1]


def test_in_flight_requests_are_admitted_but_not_counted(backend):
    # Budget 2, [G0, G1, G2] with G0 in flight in another micro batch: the capacity loop admits all
    # three (blocks reserved), the tracker passes G0 over (no tokens, not counted): G1, G2 fit.
    b = CapacityBed(backend, blocks=20)
    out = run(b, GNE, [b.gen(i, 10) for i in range(3)], fused=True, inflight=[0], max_num_tokens=2)
    assert out == {"fitting": [0, 1, 2], "disagg": [], "paused": [], "context": [], "generation": [1, 2],
                   "num_fitting": 2}


def test_beam_width_consistency_inside_the_loop(backend):
    # No KV cache (max-requests path). Beam widths [2, 1, 2, 1]: the first generation fixes width 2;
    # the width-1 ones are taken by the capacity loop but passed over by the tracker (not counted).
    b = CapacityBed(backend, kv=False)
    reqs = []
    for i, bw in enumerate([2, 1, 2, 1]):
        r = b.new(i, 4, beam_width=bw)
        b.step(r)
        reqs.append(r)
    out = run(b, GNE, reqs, fused=True, max_num_tokens=100)
    assert out == {"fitting": [0, 1, 2, 3], "disagg": [], "paused": [], "context": [], "generation": [0, 2],
                   "num_fitting": 2}


def test_max_requests_stops_at_the_first_budget_failure(backend):
    # No KV cache, budget 5: N(3), N(4), N(1). The second is over budget (7 > 5): the loop stops there,
    # so N(1), which would fit, is never evaluated (two-stage: capacity takes all three, micro-batch
    # breaks at the second). Fitting differs, the batch does not.
    def build(b):
        return [b.new(0, 3), b.new(1, 4), b.new(2, 1)]

    two, fused = modes(backend, build, GNE, bed={"kv": False}, max_num_tokens=5)
    assert two["fitting"] == [0, 1, 2] and two["context"] == [0]
    assert fused["fitting"] == [0] and fused["context"] == [0] and fused["num_fitting"] == 1


def test_a_context_longer_than_the_budget_is_an_error_without_chunking(backend):
    # TensorRT-LLM's tracker sets max_context_length = max_num_tokens: without chunking a 12-token
    # context under a budget of 10 fails the step (two-stage: it waits, over budget, forever).
    b = CapacityBed(backend, blocks=20)
    r = b.new(0, 12)
    assert run(b, GNE, [r], fused=False, max_num_tokens=10)["context"] == []
    with pytest.raises(ts.SchedulingError, match="request 0: context of 12 tokens exceeds max_context_length 10"):
        run(b, GNE, [r], fused=True, max_num_tokens=10)
    assert r.context_chunk_size == 12  # nothing was committed


def test_gne_admits_only_generation_in_progress_in_pass_one(backend):
    # TensorRT-LLM's fused loop tests the state exactly (sv == GENERATION_IN_PROGRESS): a request in
    # GENERATION_TO_COMPLETE is classified with the contexts and, not being a context, never admitted,
    # so it reserves no blocks. Two-stage admits it in pass 1 (isGenerationInProgressState).
    def build(b):
        g0 = b.gen(0, 10)
        g0.set_state(S.GENERATION_TO_COMPLETE)
        return [g0, b.gen(1, 10)]

    two, fused = modes(backend, build, GNE, bed={"blocks": 20})
    assert two["fitting"] == [0, 1] and fused["fitting"] == [1]
    assert two["generation"] == fused["generation"] == [1]  # the micro-batch window ends before it anyway


def test_the_tracker_tests_context_init_exactly(backend):
    # TensorRT-LLM's try_add takes the context branch for CONTEXT_INIT only: a DISAGG_CONTEXT_INIT_AND_TRANS
    # request goes the generation way (1 token, generation output). MAX_UTILIZATION, no chunking.
    def build(b):
        return [b.with_state(0, 10, S.DISAGG_CONTEXT_INIT_AND_TRANS), b.new(1, 10)]

    two, fused = modes(backend, build, MU, bed={"blocks": 20})
    assert two["context"] == [0, 1] and two["generation"] == []
    assert fused["context"] == [1] and fused["generation"] == [0]


def test_chunking_and_lora_sort_come_at_the_end(backend):
    # Budget 12, FCFS unit 1, LoRA tasks: G0 (task 2), G1 (task 1), N2(10) (task 2), N3(10) (task 1).
    # The tracker counts G0, G1 (2 tokens) and both contexts tentatively; finalize chunks 10 left:
    # N2 takes 10 (whole), N3 gets 0 -> dropped. Output order by LoRA task: generations [G1, G0].
    def build(b):
        return [b.gen(0, 10, lora_task_id=2), b.gen(1, 10, lora_task_id=1),
                b.new(2, 10, lora_task_id=2), b.new(3, 10, lora_task_id=1)]

    b = CapacityBed(backend, blocks=40)
    out = run(b, GNE, build(b), fused=True, max_num_tokens=12, chunking=FCFS)
    assert out == {"fitting": [0, 1, 2, 3], "disagg": [], "paused": [], "context": [2], "generation": [1, 0],
                   "num_fitting": 4}


def test_static_batch_fused(backend):
    # STATIC_BATCH with a running generation admits no context (as two-stage); with none, it admits
    # contexts under the budget: N(6), N(6) with budget 10 -> the second is over budget, not admitted.
    b = CapacityBed(backend, blocks=40)
    assert run(b, STATIC, [b.gen(0, 10), b.new(1, 5)], fused=True)["fitting"] == [0]
    b = CapacityBed(backend, blocks=40)
    out = run(b, STATIC, [b.new(0, 6), b.new(1, 6)], fused=True, max_num_tokens=10)
    assert out["fitting"] == [0] and out["context"] == [0]


def test_two_stage_is_the_default():
    assert SchedulerConfig("MAX_UTILIZATION", 1).fused is False


@settings(max_examples=200, suppress_health_check=list(HealthCheck))
@given(diff.scenarios(), st.integers(1, 4))
def test_backends_agree_on_the_serving_step(raw, unit):
    """The fused serving-step paths (policies/fused.py: generations as a block, contexts chunked
    first-come-first-served without draft tokens) against C++ on generated scenarios that take them."""
    raw["harness"] = "full"
    sched = raw["scheduler"]
    sched.update(fused=True, max_context_length=None, max_num_tokens=sched["max_num_tokens"] or 40,
                 chunking={"policy": "FIRST_COME_FIRST_SERVED",
                           "unit_size": unit * (raw["kv_cache"]["tokens_per_block"] if raw["kv_cache"] else 1)})
    raw["events"] = []
    for r in raw["requests"]:
        r["draft_tokens"] = 0
        r.pop("context_chunk_size", None)
    diff.test_backends_agree.hypothesis.inner_test(raw)
