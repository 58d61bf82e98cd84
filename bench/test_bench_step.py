"""bench/test_bench_step.py: one scheduling step per backend, policy, workload and active count.

Each benchmark schedules the same warmed-up state again and again without executing it (a
`Scheduler.schedule` call is idempotent on an unchanged state), so every round measures the same
step. The groups put the backends of one (workload, policy, N) side by side; `extra_info`
carries the crossings of the step (Python -> C++ calls) and the batch it scheduled.
"""

import pytest

from tllm_sched import bench_workloads as wl
from tllm_sched.scheduler import BACKENDS, Scheduler

ACTIVE = (64, 256, 1024, 4096)


def _crossings(st: wl.SimState):
    counter = st.counter
    if counter is None:
        return None
    counter.schedule(st.active)
    return getattr(counter, "last_step_crossings", None)


@pytest.mark.parametrize("n_active", ACTIVE)
@pytest.mark.parametrize("policy", wl.POLICIES)
@pytest.mark.parametrize("workload", wl.WORKLOADS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_step(benchmark, synthetic_state, backend, workload, policy, n_active):
    st = synthetic_state(workload, policy, n_active, backend)
    benchmark.group = f"step {workload} {policy} N={n_active}"
    benchmark.extra_info.update(backend=backend, n_active=n_active, crossings_per_step=_crossings(st))
    schedule, active = st.scheduler.schedule, st.active
    out = benchmark(schedule, active)
    benchmark.extra_info["batch"] = int(out.context.size + out.generation.size)
    assert out.context.size + out.generation.size > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_decisions_are_identical(synthetic_state, backend):
    """Sanity: the measured states make the decisions of the cpp reference."""
    ref = synthetic_state("mixed", "MAX_UTILIZATION", 256, "cpp")
    st = synthetic_state("mixed", "MAX_UTILIZATION", 256, backend)
    a, b = ref.scheduler.schedule(ref.active), st.scheduler.schedule(st.active)
    assert (a.context.tolist(), a.generation.tolist()) == (b.context.tolist(), b.generation.tolist())


def test_construction(benchmark):
    """Building a Scheduler facade (cpp): what a server pays once."""
    st = wl.build_synthetic_state("decode", "GUARANTEED_NO_EVICT", 64, "cpp", warmup=0)
    benchmark(Scheduler, st.scheduler.config, st.table, st.kv, backend="cpp")
