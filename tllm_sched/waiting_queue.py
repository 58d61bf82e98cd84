"""tllm_sched/waiting_queue.py: requests waiting to become active, first-come or by priority.

C++ twin: ext/waiting_queue.cpp. `_core.WaitingQueue` is the one queue every backend uses (like
`RequestList`, it is state, not a decision of the scheduler); what differs between backends is
the fetch step that runs before capacity scheduling. Mirrors TensorRT-LLM's waiting_queue.py
(FCFSWaitingQueue, PriorityWaitingQueue, create_waiting_queue) and get_from_waiting_queue:

  - FCFS: arrival order; priorities are ignored;
  - PRIORITY: higher priority first (the table's `priority` column, read when the request is
    added), arrival order among equals;
  - prepend_requests (a request returned to the queue): ahead of every request of its priority
    added normally, in the order given.

Each step the waiting requests there is room for (max_num_active_requests minus the active
list's length) join the end of the active list, in the queue's order.
"""

from __future__ import annotations

from tllm_sched import _core

__all__ = ["POLICIES", "make_waiting_queue", "fetch_batched", "fetch_per_request"]

# The policies (TensorRT-LLM's WaitingQueuePolicy members), read from the C++ enum.
POLICIES = tuple(_core.WaitingQueuePolicy.__members__)


def make_waiting_queue(policy: str, table: _core.RequestTable) -> _core.WaitingQueue:
    """An empty queue of `table`'s requests. Raises ValueError for an unknown policy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown waiting queue policy {policy!r} (choose from {', '.join(POLICIES)})")
    return _core.WaitingQueue(table, getattr(_core.WaitingQueuePolicy, policy))


def fetch_batched(queue, size_view, active, max_num_active: int) -> int:
    """The batched Python backend's fetch: no call while the queue is empty (its zero-copy
    `size_view` says so), else one."""
    if size_view[0] == 0:
        return 0
    return queue.fetch(active, max_num_active)


def fetch_per_request(queue, active, max_num_active: int) -> int:
    """python-naive's fetch, shaped like TensorRT-LLM's get_from_waiting_queue: pop request by
    request, then append each. All or nothing, as the C++ fetch: a request already active sends
    every popped one back (prepend keeps their order and place)."""
    room = max_num_active - len(active)
    taken = []
    while len(taken) < room and len(queue) > 0:
        taken.append(queue.pop_request())
    clash = next((r for r in taken if r in active), None)
    if clash is not None:
        for r in reversed(taken):
            queue.prepend_requests(r)
        raise ValueError(f"request {clash.request_id} is waiting and already active")
    for r in taken:
        active.append(r)
    return len(taken)
