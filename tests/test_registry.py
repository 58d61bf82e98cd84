"""tests/test_registry.py: the registry's closed sets match their C++ twins, and each consumer
offers exactly the registry's members."""

import pytest

import tllm_sched as ts
from tllm_sched import bench_args, bench_report, bench_workloads, scenario
from tllm_sched.config import SchedulerConfig
from tllm_sched.registry import BENCH_POLICIES, CAPACITY_POLICIES, CHUNKING_POLICIES
from tllm_sched.scheduler import Scheduler


def test_capacity_policies_are_the_cpp_enum_in_its_order():
    assert list(CAPACITY_POLICIES) == list(ts.CapacitySchedulerPolicy.__members__)
    assert all(name == p.name for name, p in CAPACITY_POLICIES.items())


def test_chunking_policies_are_the_cpp_enum_in_its_order():
    assert list(CHUNKING_POLICIES) == list(ts.ContextChunkingPolicy.__members__)


def test_short_names_and_aliases_name_one_policy_each():
    spellings = [s for p in CAPACITY_POLICIES.values() for s in (p.name, p.short, *p.aliases)]
    assert len(spellings) == len(set(spellings))


def test_consumers_read_the_registry():
    assert scenario.POLICIES == tuple(CAPACITY_POLICIES)
    assert scenario.CHUNKING_POLICIES == CHUNKING_POLICIES
    assert set(BENCH_POLICIES) <= set(CAPACITY_POLICIES)
    assert bench_workloads.POLICIES == BENCH_POLICIES
    assert bench_report.POLICY_SHORT == {"MAX_UTILIZATION": "MU", "GUARANTEED_NO_EVICT": "GNE", "STATIC_BATCH": "SB"}
    assert bench_args.ALIASES == {"MU": "MAX_UTILIZATION", "MAX_UTIL": "MAX_UTILIZATION", "GNE": "GUARANTEED_NO_EVICT"}


@pytest.mark.parametrize("policy", CAPACITY_POLICIES)
def test_scenario_validation_accepts_every_registered_policy(policy):
    assert scenario.parse_scenario({
        "format": scenario.FORMAT, "harness": "full",
        "scheduler": {"policy": policy, "max_num_requests": 1},
        "requests": [{"id": 1, "prompt_len": 4, "max_new_tokens": 1}],
    }).scheduler.policy == policy


def test_every_backend_refuses_an_unknown_policy(backend):
    t = ts.RequestTable(2)
    kv = ts.KVCacheManager(t, 4, 8, 32)
    with pytest.raises(ValueError, match="unknown capacity scheduler policy 'ROUND_ROBIN'"):
        Scheduler(SchedulerConfig("ROUND_ROBIN", 2), t, kv, backend=backend)
