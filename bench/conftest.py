"""bench/conftest.py: shared fixtures of the pytest-benchmark suite (not collected by the unit tests).

Run from the repository root (`pytest`, not `python -m pytest`: see tests/conftest.py):

    pytest bench --benchmark-json=bench-results/pytest-benchmark.json
"""

import pytest

from tllm_sched import bench_workloads as wl
from tllm_sched.scheduler import BACKENDS

_USABLE, _NOTICES = wl.probe_backends(BACKENDS)
_STATES = {}  # the few most recent states (a 4,096-request state holds tens of MB)
_KEEP = 4


def require_backend(backend: str) -> None:
    """Skips the benchmark, with the reason, when the backend cannot be built here."""
    if backend not in _USABLE:
        pytest.skip(next(n for n in _NOTICES if f"backend {backend} " in n))


@pytest.fixture(scope="session")
def synthetic_state():
    """state(workload, policy, n_active, backend) -> a warmed-up SimState, built once per session."""

    def get(workload: str, policy: str, n_active: int, backend: str) -> wl.SimState:
        require_backend(backend)
        key = (workload, policy, n_active, backend)
        st = _STATES.pop(key, None) or wl.build_synthetic_state(workload, policy, n_active, backend)
        _STATES[key] = st  # most recent last
        while len(_STATES) > _KEEP:
            del _STATES[next(iter(_STATES))]
        return st

    yield get
    _STATES.clear()
