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

from tllm_sched.replay import RunFailure, replay
from tllm_sched.scenario import ScenarioError, parse_scenario
from tllm_sched.scheduler import BACKENDS
from scenario_strategies import fused_or_queued, scenarios
from utils import lowered_thresholds

EXAMPLES = int(os.environ.get("TLLM_DIFF_EXAMPLES", "1000"))


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
