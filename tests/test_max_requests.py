"""tests/test_max_requests.py: the capacity path without a KV cache (MaxRequestsScheduler).

Twins: ext/policies/max_requests.cpp, tllm_sched/policies/max_requests.py, tllm_sched/naive/max_requests.py.

Set-up and notation (G(p), N(p)): tests/utils.py `CapacityBed`. Every expected id list is derived
by hand in the comment beside it; each test runs on every backend (the `backend` fixture).
"""

from __future__ import annotations

import pytest

from tllm_sched.registry import CAPACITY_POLICIES

from utils import CapacityBed as Bed, S


# =============================================================================== max requests (§2.2)


@pytest.mark.parametrize("policy", CAPACITY_POLICIES)
def test_max_requests_path_without_kv_cache(backend, policy):
    # §2.1: no KV cache manager -> MaxRequestsScheduler whatever the policy. §2.2: skip what the
    # window [CONTEXT_INIT, GENERATION_COMPLETE) excludes (no disagg exception: D2 is out; so are
    # ENCODER_INIT E3 and GENERATION_COMPLETE C4); take context-init (N0, X5 =
    # DISAGG_CONTEXT_INIT_AND_TRANS, N6) and generation-in-progress (G1) until the count is full.
    # No blocks are checked: N0 has a 5000-token prompt.
    b = Bed(backend, kv=False)
    reqs = [b.new(0, 5000), b.with_state(1, 10, S.GENERATION_IN_PROGRESS), b.with_state(2, 10, S.DISAGG_GENERATION_INIT),
            b.with_state(3, 10, S.ENCODER_INIT), b.with_state(4, 10, S.GENERATION_COMPLETE),
            b.with_state(5, 10, S.DISAGG_CONTEXT_INIT_AND_TRANS), b.new(6, 10)]
    assert b.capacity(policy, reqs, max_num_requests=8) == ([0, 1, 5, 6], [], [])
    assert b.capacity(policy, reqs, max_num_requests=3) == ([0, 1, 5], [], [])
