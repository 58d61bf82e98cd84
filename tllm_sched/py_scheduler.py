"""tllm_sched/py_scheduler.py: the batched Python backend behind `Scheduler(backend="python")`.

Builds the column views once, wraps the C++ objects in crossing counters when asked, and wires
the capacity and micro-batch stages. "python-naive" lives in tllm_sched/naive/.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched.backend import SchedulerOutput, list_slots
from tllm_sched.capacity_scheduler import PyCapacityScheduler
from tllm_sched.crossings import Counter, counted, counting
from tllm_sched.micro_batch_scheduler import PyMicroBatchScheduler
from tllm_sched.policies import chunking
from tllm_sched.policies.fused import TokenBudget
from tllm_sched.waiting_queue import fetch_batched


class PythonBackend:
    """The batched Python scheduler: a few Python -> C++ calls per step, whatever the load."""

    def __init__(self, config, table, kv, cross_kv, peft, counter: Optional[Counter] = None, waiting=None):
        self.cols = table.columns()  # zero-copy views, built once
        self._tallies = table.tallies()
        wrap = counting(counter)
        self._waiting = wrap(waiting)
        self._waiting_size = None if waiting is None else waiting.size_view  # zero-copy: an empty queue costs no call
        self._table = wrap(table)
        self._kv, self._cross, self._peft = wrap(kv), wrap(cross_kv), wrap(peft)
        self.config = config
        ch = config.chunking
        self.capacity = PyCapacityScheduler(
            self.cols, self._table, config.max_num_requests, config.policy, self._kv, self._peft, self._cross,
            config.two_steps_look_ahead, reuse=bool(kv is not None and kv.enable_block_reuse),
            max_device_pages=None if peft is None else peft.max_device_pages, counter=counter,
        )
        self.micro = PyMicroBatchScheduler(
            self.cols, table.tallies(), self._table, None if ch is None else ch.policy, None if ch is None else ch.unit_size,
            config.max_context_length,
        )
        self._budget = TokenBudget(self.micro, self._tallies, config)  # the fused pass's tracker, reset each step
        self._list_slots = counted(list_slots, counter)

    def schedule(self, active, inflight_ids):
        if self._waiting is not None:
            self.fetch_new_requests(active)
        if self.config.fused:
            # The one read of the list, copied: outputs may be slices of it and must not change
            # when the list does.
            fit, disagg, paused = self.capacity.schedule_fused(self._list_slots(active).copy(), self._budget, inflight_ids)
            ctx, gen, num_fitting = self._budget.finalize()
            return SchedulerOutput(fit, disagg, paused, ctx, gen, num_fitting)
        # The list is read (and copied) only if the capacity policy needs its slots; a step handed
        # to one C++ loop (block reuse) reads it there, in place.
        fit, disagg, paused, split = self.capacity.schedule_split(None, active)
        ctx, gen = self.micro.schedule(fit, inflight_ids, self.config.max_batch_size, self.config.max_num_tokens, split)
        return SchedulerOutput(fit, disagg, paused, ctx, gen, fit.size)

    def fetch_new_requests(self, active) -> int:
        if self._waiting is None:
            return 0
        return fetch_batched(self._waiting, self._waiting_size, active, self.config.max_num_active_requests)

    def schedule_capacity(self, slots):
        return self.capacity.schedule(slots.copy())  # outputs may be slices: never of the caller's array

    def schedule_micro(self, slots, inflight_ids):
        return self.micro.schedule(slots.copy(), inflight_ids, self.config.max_batch_size, self.config.max_num_tokens)

    def set_ctx_requests_chunk_size(self, slots: np.ndarray) -> None:
        c, cfg = self.cols, self.config
        remaining = (c["prompt_len"][slots] - c["context_current_position"][slots]).tolist()
        chunks, discard = chunking.set_ctx_requests_chunk_size(
            remaining, c["num_draft_tokens"][slots].tolist(), cfg.chunking.policy, cfg.max_num_tokens,
            cfg.chunking.unit_size, cfg.max_context_length)
        self.micro.commit(slots, chunks, discard)

