"""Differential test: the cpp, python and python-naive backends give identical decision logs.

Hypothesis generates valid tllm_sched.scenario/1 scenarios covering every policy, both chunking
policies, token budgets, block reuse with shared prefixes (partial reuse, copy or take over, a
host pool), LoRA/PEFT, draft tokens and draft events, staggered arrivals and priorities, pauses
(MAX_UTILIZATION under pressure), disagg-generation-init requests, cross caches, beam widths
(without a KV cache) and two micro slots; then the same in the fused mode and with waiting queues.
Each one is replayed on the three backends; the logs, or the run failure and the log up to it,
must be equal. TLLM_DIFF_EXAMPLES sets the count
(default 1000, the CI figure).
"""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES, WAITING_QUEUE_POLICIES
from tllm_sched.replay import RunFailure, replay
from tllm_sched.scenario import ScenarioError, parse_scenario
from tllm_sched.scheduler import BACKENDS
from utils import lowered_thresholds

EXAMPLES = int(os.environ.get("TLLM_DIFF_EXAMPLES", "1000"))


@st.composite
def scenarios(draw):
    tpb = draw(st.sampled_from([1, 2, 4, 8]))
    max_seq_len = draw(st.integers(8, 64))
    reuse = draw(st.sampled_from([False, True, True]))
    harness = draw(st.sampled_from(["full", "full", "full", "capacity", "micro"]))
    with_kv = harness != "micro" or draw(st.booleans())
    kv = None
    min_blocks = max(2, -(-max_seq_len // tpb))
    if with_kv:
        kv = {
            "tokens_per_block": tpb,
            # Often just above the minimum, so MAX_UTILIZATION has to pause.
            "num_blocks": draw(st.one_of(st.integers(min_blocks, min_blocks + 3), st.integers(min_blocks, min_blocks + 40))),
            "max_seq_len": max_seq_len,
            "enable_block_reuse": reuse,
            "enable_partial_reuse": draw(st.booleans()),
            "copy_on_partial_reuse": draw(st.booleans()),
            "num_secondary_blocks": draw(st.sampled_from([0, 0, 0, 4])),
        }
    cross = None
    if with_kv and draw(st.integers(0, 5)) == 0:
        cross = {"tokens_per_block": tpb, "num_blocks": kv["num_blocks"], "max_seq_len": max_seq_len}
    chunking = None
    if draw(st.booleans()):
        unit = tpb * draw(st.integers(1, 3)) if (with_kv and reuse) else draw(st.integers(1, 8))
        chunking = {"policy": draw(st.sampled_from(CHUNKING_POLICIES)), "unit_size": unit}
    max_num_requests = draw(st.integers(1, 6))
    sched = {
        "policy": draw(st.sampled_from(list(CAPACITY_POLICIES))),
        "max_num_requests": max_num_requests,
        "max_batch_size": draw(st.integers(1, 6)),
        "max_num_tokens": draw(st.one_of(st.none(), st.integers(4, 80))),
        "max_context_length": draw(st.one_of(st.none(), st.integers(4, 64))),
        "chunking": chunking,
        "two_steps_look_ahead": draw(st.booleans()),
    }
    prefixes = [draw(st.lists(st.integers(0, 3), min_size=max_seq_len, max_size=max_seq_len)) for _ in range(2)]
    n = draw(st.integers(1, 8))
    reqs = []
    for i in range(n):
        max_new = draw(st.integers(1, min(8, max_seq_len - 1)))
        plen = draw(st.integers(1, max_seq_len - max_new))
        prompt = list(draw(st.sampled_from(prefixes))[:plen])
        if draw(st.booleans()):  # diverge after a shared prefix
            cut = draw(st.integers(0, plen - 1))
            prompt[cut:] = draw(st.lists(st.integers(0, 3), min_size=plen - cut, max_size=plen - cut))
        r = {"id": draw(st.sampled_from([i, i + 10, 100 - i])), "prompt": prompt, "max_new_tokens": max_new,
             "arrive_at": draw(st.integers(0, 4)), "priority": draw(st.sampled_from([0.3, 0.5, 0.5, 0.8])),
             "lora_task_id": draw(st.sampled_from([None, None, 1, 2, 3])), "draft_tokens": draw(st.integers(0, 3)),
             "state": draw(st.sampled_from(["CONTEXT_INIT"] * 6 + ["ENCODER_INIT"] +
                                           (["DISAGG_GENERATION_INIT"] if harness != "micro" else [])))}
        if not with_kv:
            r["beam_width"] = draw(st.sampled_from([1, 1, 2]))
        if cross is not None:
            r["encoder_output_len"] = draw(st.integers(1, max_seq_len))
        if chunking is not None and draw(st.integers(0, 3)) == 0:
            r["context_chunk_size"] = draw(st.integers(1, 4)) * (chunking["unit_size"] if reuse else 1)
        reqs.append(r)
    events = []
    if draw(st.booleans()):
        events.append({"at": draw(st.integers(0, 6)), "set_draft_tokens": {
            "ids": [reqs[0]["id"]], "count": draw(st.integers(0, 3))}})
    return {
        "format": "tllm_sched.scenario/1",
        "harness": harness,
        "kv_cache": kv,
        "cross_kv_cache": cross,
        "peft": draw(st.one_of(st.none(), st.builds(
            lambda p, m: {"pages_per_task": p, "max_device_pages": p + m}, st.integers(1, 5), st.integers(0, 10)))),
        "scheduler": sched,
        "micro_slots": draw(st.sampled_from([1, 1, 2])),
        "max_input_len": draw(st.integers(4, 64)),
        "requests": reqs,
        "events": events,
        "max_iterations": 120,
    }


def run(sc, backend):
    out = io.StringIO()
    try:
        replay(sc, backend, out)
        return out.getvalue(), None
    except RunFailure as e:
        return out.getvalue(), str(e)


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_backends_agree(raw):
    try:
        sc = parse_scenario(raw)
    except ScenarioError:
        return  # an invalid draw (e.g. duplicate ids): nothing to compare
    ref_log, ref_fail = run(sc, "cpp")
    for backend in BACKENDS:
        if backend == "cpp":
            continue
        log, fail = run(sc, backend)
        if log != ref_log:
            a, b = ref_log.splitlines(), log.splitlines()
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            pytest.fail(f"{backend} differs from cpp at log line {k}:\ncpp:    {a[k] if k < len(a) else '<end>'}\n"
                        f"{backend}: {b[k] if k < len(b) else '<end>'}")
        assert fail == ref_fail, f"{backend} run failure {fail!r} != cpp {ref_fail!r}"


@settings(max_examples=max(100, EXAMPLES // 3), suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_backends_agree_on_the_large_batch_paths(raw):
    """The same comparison with the size thresholds of the large-list paths lowered
    (tests/utils.py LOWERED_THRESHOLDS), so the tiny generated scenarios take them."""
    with lowered_thresholds():
        test_backends_agree.hypothesis.inner_test(raw)


@settings(max_examples=max(100, EXAMPLES // 3), suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_python_scheduler_stays_within_the_crossing_budget(raw):
    """Every full step of the batched Python scheduler, in every generated configuration (cross
    caches, reuse, PEFT, drafts, disagg states, pauses...), makes at most 8 Python -> C++ calls,
    plus one per pause (the issue's budget), also when skip keys come in many windows."""
    import tllm_sched.replay as replay_mod
    from tllm_sched.scheduler import Scheduler

    try:
        sc = parse_scenario(raw)
    except ScenarioError:
        return
    steps = []

    class Counting(Scheduler):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw, count_crossings=True)

        def schedule(self, active, inflight_ids=None):
            out = super().schedule(active, inflight_ids)
            steps.append((self.last_step_crossings, out.paused.size))
            return out

    saved = replay_mod.Scheduler
    replay_mod.Scheduler = Counting
    try:
        run(sc, "python")
        with lowered_thresholds():
            run(sc, "python")
    finally:
        replay_mod.Scheduler = saved
    over = [(c, p) for c, p in steps if c > 8 + p]
    assert not over, f"steps over budget (crossings, pauses): {over[:5]}"


@st.composite
def fused_or_queued(draw):
    """`scenarios()` in the fused mode (three times in four) and/or with a waiting queue (every
    other one): the same three-backend comparison covers both features."""
    raw = draw(scenarios())
    sched = raw["scheduler"]
    if draw(st.integers(0, 3)):
        sched["fused"] = True
        raw["harness"] = "full"
    if draw(st.booleans()):
        sched["waiting_queue_policy"] = draw(st.sampled_from(WAITING_QUEUE_POLICIES))
        sched["max_num_active_requests"] = draw(st.one_of(st.none(), st.integers(1, 6)))
    return raw


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
@given(fused_or_queued())
def test_backends_agree_fused_and_queued(raw):
    test_backends_agree.hypothesis.inner_test(raw)


@settings(max_examples=max(100, EXAMPLES // 3), suppress_health_check=list(HealthCheck))
@given(fused_or_queued())
def test_backends_agree_fused_and_queued_on_the_large_batch_paths(raw):
    with lowered_thresholds():
        test_backends_agree.hypothesis.inner_test(raw)


@settings(max_examples=max(100, EXAMPLES // 3), suppress_health_check=list(HealthCheck))
@given(fused_or_queued())
def test_fused_python_scheduler_stays_within_the_crossing_budget(raw):
    test_python_scheduler_stays_within_the_crossing_budget.hypothesis.inner_test(raw)


@settings(max_examples=max(50, EXAMPLES // 10), deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_colliding_block_hashes_change_no_decision(raw):
    """Block hashes only find candidates: with every chained hash masked to 2 bits (most lookups
    meet other blocks' hashes), each backend's log is the one it gives with full hashes."""
    import gc

    from tllm_sched import _core

    try:
        sc = parse_scenario(raw)
    except ScenarioError:
        return
    if sc.kv_cache is None or not sc.kv_cache.enable_block_reuse:
        return
    for backend in BACKENDS:
        full = run(sc, backend)
        gc.collect()  # the mask may change only while no KVCacheManager lives
        _core._set_block_hash_mask(3)
        try:
            assert run(sc, backend) == full, backend
        finally:
            gc.collect()
            _core._set_block_hash_mask(2**64 - 1)
