"""tests/test_waiting_queue.py: the waiting queue (FCFS, PRIORITY) and the fetch step before scheduling.

Twins: ext/waiting_queue.cpp, tllm_sched/waiting_queue.py. Mirrors TensorRT-LLM's waiting_queue.py
(FCFSWaitingQueue, PriorityWaitingQueue) and get_from_waiting_queue. Expected orders are derived by
hand from the rules: FCFS ignores priorities; PRIORITY serves higher priority first, arrival order
among equals; a request returned with prepend_requests comes out before every request of its
priority added normally.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched import waiting_queue
from tllm_sched.config import SchedulerConfig
from tllm_sched.registry import WAITING_QUEUE_POLICIES
from tllm_sched.replay import replay
from tllm_sched.scenario import ScenarioError, parse_scenario
from tllm_sched.scheduler import BACKENDS, Scheduler


def _table(priorities):
    """A table with requests 0..n-1 of these priorities (4-token prompts)."""
    t = ts.RequestTable(16)
    reqs = [t.add_request(i, np.ones(4, dtype=np.int32), 2, priority=p) for i, p in enumerate(priorities)]
    return t, reqs


def _ids(t, q):
    return t.request_ids(q.slots).tolist()


def test_policies_are_the_cpp_enum():
    assert WAITING_QUEUE_POLICIES == waiting_queue.POLICIES == ("FCFS", "PRIORITY")


def test_fcfs_ignores_priorities():
    t, reqs = _table([0.5, 0.8, 0.2, 0.8])
    q = waiting_queue.make_waiting_queue("FCFS", t)
    for r in reqs:
        q.add_requests(r)
    assert _ids(t, q) == [0, 1, 2, 3]
    assert [q.pop_request().request_id for _ in range(4)] == [0, 1, 2, 3]


def test_priority_serves_higher_first_and_arrival_order_among_equals():
    # 0.8: requests 1, 3 (in arrival order); 0.5: 0, 4; 0.2: 2.
    t, reqs = _table([0.5, 0.8, 0.2, 0.8, 0.5])
    q = waiting_queue.make_waiting_queue("PRIORITY", t)
    q.add_requests(np.array([r.slot for r in reqs], dtype=np.int32))
    assert _ids(t, q) == [1, 3, 0, 4, 2]
    assert q.peek_request().request_id == 1
    assert [q.pop_request().request_id for _ in range(5)] == [1, 3, 0, 4, 2]
    with pytest.raises(ValueError, match="pop from an empty waiting queue"):
        q.pop_request()


def test_a_returned_request_keeps_its_place_among_its_priority():
    # Add 0 (0.5), 1 (0.5); pop 0; add 2 (0.5), 3 (0.9); return 0: it comes out after the higher
    # priority 3 but before 1 and 2, which were added normally with its priority.
    t, reqs = _table([0.5, 0.5, 0.5, 0.9])
    q = waiting_queue.make_waiting_queue("PRIORITY", t)
    q.add_requests(reqs[0])
    q.add_requests(reqs[1])
    assert q.pop_request().request_id == 0
    q.add_requests(reqs[2])
    q.add_requests(reqs[3])
    q.prepend_requests(reqs[0])
    assert _ids(t, q) == [3, 0, 1, 2]


@pytest.mark.parametrize("policy", WAITING_QUEUE_POLICIES)
def test_prepend_requests_keeps_the_order_given(policy):
    # [2, 0] returned together come out in that order, ahead of 1 (same priority, added normally).
    t, reqs = _table([0.5, 0.5, 0.5])
    q = waiting_queue.make_waiting_queue(policy, t)
    q.add_requests(reqs[1])
    q.prepend_requests(np.array([reqs[2].slot, reqs[0].slot], dtype=np.int32))
    assert _ids(t, q) == [2, 0, 1]


def test_fetch_moves_the_next_requests_up_to_the_limit():
    # Active [3]; limit 3 -> room 2: the two first waiting (PRIORITY: 1 (0.8), then 0) join the end.
    t, reqs = _table([0.5, 0.8, 0.2, 0.5])
    q = waiting_queue.make_waiting_queue("PRIORITY", t)
    for r in reqs[:3]:
        q.add_requests(r)
    active = ts.RequestList(t)
    active.append(reqs[3])
    assert q.fetch(active, 3) == 2
    assert active.request_ids().tolist() == [3, 1, 0]
    assert _ids(t, q) == [2] and len(q) == 1 and q.size_view[0] == 1
    assert q.fetch(active, 3) == 0  # full


def test_fetch_refuses_a_request_already_active_and_changes_nothing():
    t, reqs = _table([0.5, 0.5])
    q = waiting_queue.make_waiting_queue("FCFS", t)
    q.add_requests(reqs[0])
    q.add_requests(reqs[1])
    active = ts.RequestList(t)
    active.append(reqs[1])
    with pytest.raises(ValueError, match="request 1 is waiting and already active"):
        q.fetch(active, 5)
    assert _ids(t, q) == [0, 1] and active.request_ids().tolist() == [1]


def test_bad_input_is_refused():
    t, reqs = _table([0.5, 0.5])
    q = waiting_queue.make_waiting_queue("FCFS", t)
    q.add_requests(reqs[0])
    with pytest.raises(ValueError, match="request 0 is already waiting"):
        q.add_requests(reqs[0])
    with pytest.raises(ValueError, match="listed twice"):
        q.add_requests(np.array([reqs[1].slot, reqs[1].slot], dtype=np.int32))
    with pytest.raises(TypeError, match="expected an LlmRequest or an int32 array"):
        q.add_requests([reqs[1].slot])
    with pytest.raises(ValueError, match="unknown waiting queue policy 'LIFO'"):
        waiting_queue.make_waiting_queue("LIFO", t)
    assert _ids(t, q) == [0]


def test_remove_by_ids_and_the_table_refuses_to_remove_a_waiting_request():
    t, reqs = _table([0.5, 0.9, 0.1])
    q = waiting_queue.make_waiting_queue("PRIORITY", t)
    for r in reqs:
        q.add_requests(r)
    with pytest.raises(ValueError):
        t.remove_request(reqs[1])
    q.remove_by_ids(np.array([1, 99], dtype=np.int64))
    assert _ids(t, q) == [0, 2]
    t.remove_request(reqs[1])  # no longer held


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_step_first_fetches_then_schedules(backend):
    # max_num_active_requests 2, PRIORITY; waiting 0 (0.5), 1 (0.9), 2 (0.9). Step 1 fetches 1 and 2
    # (the two highest, arrival order), and schedules them; 0 waits until one finishes (1 new token).
    t, reqs = _table([0.5, 0.9, 0.9])
    kv = ts.KVCacheManager(t, 4, 16, 16)
    cfg = SchedulerConfig("GUARANTEED_NO_EVICT", 4, waiting_queue_policy="PRIORITY", max_num_active_requests=2)
    s = Scheduler(cfg, t, kv, backend=backend)
    for r in reqs:
        s.waiting_queue.add_requests(r)
    active = ts.RequestList(t)
    o = s.schedule(active)
    assert active.request_ids().tolist() == [1, 2]
    assert t.request_ids(o.context).tolist() == [1, 2]
    assert t.request_ids(s.waiting_queue.slots).tolist() == [0]
    assert s.fetch_new_requests(active) == 0  # no room


def test_without_a_policy_there_is_no_queue():
    t, _ = _table([0.5])
    s = Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 4), t, ts.KVCacheManager(t, 4, 8, 16))
    assert s.waiting_queue is None and s.fetch_new_requests(ts.RequestList(t)) == 0
    with pytest.raises(ValueError, match=r"SchedulerConfig\.max_num_active_requests must be a positive int, got 0"):
        SchedulerConfig("GUARANTEED_NO_EVICT", 4, waiting_queue_policy="FCFS", max_num_active_requests=0)


# ------------------------------------------------------------------ the scenario format

def _scenario(**sched):
    return {"format": "tllm_sched.scenario/1", "kv_cache": {"tokens_per_block": 4, "num_blocks": 16, "max_seq_len": 16},
            "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 4, **sched},
            "requests": [{"id": i, "prompt_len": 4, "max_new_tokens": 1, "priority": p}
                         for i, p in enumerate([0.5, 0.9, 0.9])]}


@pytest.mark.parametrize("sched, message", [
    ({"waiting_queue_policy": "LIFO"}, 'scheduler.waiting_queue_policy: must be one of "FCFS", "PRIORITY", got "LIFO"'),
    ({"max_num_active_requests": 2}, "scheduler.max_num_active_requests: needs waiting_queue_policy"),
    ({"waiting_queue_policy": "FCFS", "max_num_active_requests": 0},
     "scheduler.max_num_active_requests: must be a positive int, got 0"),
])
def test_scenario_rejects_bad_waiting_queue_keys(sched, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(_scenario(**sched))


def test_scenario_rejects_a_waiting_queue_with_the_chunking_harness():
    raw = _scenario(waiting_queue_policy="FCFS", chunking={"policy": "EQUAL_PROGRESS", "unit_size": 4})
    raw["harness"] = "chunking"
    with pytest.raises(ScenarioError, match='scheduler.waiting_queue_policy: must be null with harness "chunking"'):
        parse_scenario(raw)


def _log(raw, backend):
    out = io.StringIO()
    replay(parse_scenario(raw), backend, out)
    return [line for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_with_a_waiting_queue_logs_the_queue(backend):
    # PRIORITY, at most 2 active: iteration 0 fetches 1 and 2 (0.9 each, file order); both run their
    # context (4 tokens, 1 new token each) and finish. Iteration 1 fetches 0.
    lines = _log(_scenario(waiting_queue_policy="PRIORITY", max_num_active_requests=2), backend)
    assert lines[0].startswith('{"it": 0, "active": [1, 2], "waiting": [0], "fitting": [1, 2]')
    assert lines[1].startswith('{"it": 1, "active": [0], "waiting": [], "fitting": [0]')
    assert lines[2] == '{"iterations": 2, "reused_blocks": 0, "missed_blocks": 0}'
    # Without a queue, arrivals insert by priority into the active list (the existing behaviour).
    assert _log(_scenario(), backend)[0].startswith('{"it": 0, "active": [1, 2, 0], "fitting": [1, 2, 0]')
