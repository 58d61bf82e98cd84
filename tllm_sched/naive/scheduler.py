"""tllm_sched/naive/scheduler.py: the python-naive backend behind `Scheduler(backend="python-naive")`.

Twin: tllm_sched/py_scheduler.py (the batched backend). Wraps every C++ object and request
handle in a crossing counter when asked, picks the capacity policy from the registry, and runs
the capacity then the micro-batch stage over request handles.
"""

from __future__ import annotations

import numpy as np

from tllm_sched.backend import SchedulerOutput
from tllm_sched.crossings import counting
from tllm_sched.naive import micro_batch_scheduler
from tllm_sched.naive.chunking import set_ctx_requests_chunk_size
from tllm_sched.naive.common import CapacityContext
from tllm_sched.registry import resolve_capacity_policy


def _slots(reqs) -> np.ndarray:
    return np.array([r.slot for r in reqs], dtype=np.int32)


class NaiveBackend:
    def __init__(self, config, table, kv, cross_kv, peft, counter=None):
        wrap = counting(counter)
        self._wrap = wrap
        self.table = wrap(table)
        self.config = config
        self.capacity = CapacityContext(config, wrap(kv), wrap(cross_kv), wrap(peft))
        self._policy = resolve_capacity_policy(config.policy, kv is not None).naive  # picked once

    def _handles(self, slots) -> list:
        return [self._wrap(self.table.request_at(int(s))) for s in slots]

    def _capacity(self, reqs: list):
        """(fitting requests, fitting disagg-gen-init requests, paused requests)."""
        fitting, paused = self._policy(self.capacity, reqs)
        disagg = [r for r in fitting if r.is_disagg_generation_init_state]
        fit = [r for r in fitting if not r.is_disagg_generation_init_state]
        return fit, disagg, paused

    # ------------------------------------------------------------------ the backend protocol
    def schedule(self, active, inflight_ids):
        reqs = [self._wrap(r) for r in self._wrap(active).requests()]
        fit, disagg, paused = self._capacity(reqs)
        ctx, gen = micro_batch_scheduler.schedule(fit, inflight_ids, self.config)
        return SchedulerOutput(_slots(fit), _slots(disagg), _slots(paused), _slots(ctx), _slots(gen))

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
