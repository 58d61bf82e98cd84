"""tllm_sched/naive/scheduler.py: the python-naive backend behind `Scheduler(backend="python-naive")`.

Twin: tllm_sched/py_scheduler.py (the batched backend). Wraps every C++ object and request
handle in a crossing counter when asked, picks the capacity policy from the registry, and runs
the capacity then the micro-batch stage over request handles.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.backend import SchedulerOutput, list_requests
from tllm_sched.crossings import counted, counting
from tllm_sched.naive import micro_batch_scheduler
from tllm_sched.naive.chunking import set_ctx_requests_chunk_size
from tllm_sched.naive.common import CapacityContext
from tllm_sched.naive.fused import TokenBudgetTracker
from tllm_sched.registry import resolve_capacity_policy
from tllm_sched.waiting_queue import fetch_per_request


def _slots(reqs) -> np.ndarray:
    return np.array([r.slot for r in reqs], dtype=np.int32)


class NaiveBackend:
    def __init__(self, config, table, kv, cross_kv, peft, counter=None, waiting=None):
        wrap = counting(counter)
        self._wrap = wrap
        self._list_requests = counted(list_requests, counter)
        self.table = wrap(table)
        self.config = config
        self.capacity = CapacityContext(config, wrap(kv), wrap(cross_kv), wrap(peft))
        entry = resolve_capacity_policy(config.policy, kv is not None)
        self._policy, self._fused = entry.naive, entry.fused_naive  # picked once
        self._waiting = wrap(waiting)

    def _handles(self, slots) -> list:
        return [self._wrap(self.table.request_at(int(s))) for s in slots]

    def _capacity(self, reqs: list, tracker=None):
        """(fitting requests, fitting disagg-gen-init requests, paused requests); with a tracker,
        the fused loop."""
        fitting, paused = self._policy(self.capacity, reqs) if tracker is None else self._fused(self.capacity, reqs, tracker)
        disagg = [r for r in fitting if r.is_disagg_generation_init_state]
        fit = [r for r in fitting if not r.is_disagg_generation_init_state]
        return fit, disagg, paused

    # ------------------------------------------------------------------ the backend protocol
    def schedule(self, active, inflight_ids):
        self.fetch_new_requests(active)
        reqs = [self._wrap(r) for r in self._list_requests(active)]
        if self.config.fused:
            tracker = TokenBudgetTracker(self.config, inflight_ids)
            fit, disagg, paused = self._capacity(reqs, tracker)
            ctx, gen, num_fitting = tracker.finalize()
            return SchedulerOutput(_slots(fit), _slots(disagg), _slots(paused), _slots(ctx), _slots(gen), num_fitting)
        fit, disagg, paused = self._capacity(reqs)
        ctx, gen = micro_batch_scheduler.schedule(fit, inflight_ids, self.config)
        return SchedulerOutput(_slots(fit), _slots(disagg), _slots(paused), _slots(ctx), _slots(gen))

    def fetch_new_requests(self, active) -> int:
        if self._waiting is None:
            return 0
        return fetch_per_request(self._waiting, self._wrap(active), self.config.max_num_active_requests)

    def schedule_capacity(self, slots):
        return tuple(_slots(reqs) for reqs in self._capacity(self._handles(slots)))

    def schedule_micro(self, slots, inflight_ids):
        ctx, gen = micro_batch_scheduler.schedule(self._handles(slots), inflight_ids, self.config)
        return _slots(ctx), _slots(gen)

    def set_ctx_requests_chunk_size(self, slots) -> None:
        reqs = self._handles(slots)
        # Check every request before changing any (all-or-nothing, as the C++ setter).
        for r in reqs:
            if not r.is_context_init_state:
                raise ValueError(f"request {r.request_id} is not in a context state")
        set_ctx_requests_chunk_size(reqs, self.config, self.config.max_num_tokens)
