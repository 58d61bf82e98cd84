"""tllm_sched/capacity_scheduler.py: which active requests get KV blocks and LoRA pages, batched.

C++ twin: ext/capacity_scheduler.cpp. Mirrors TensorRT-LLM's CapacityScheduler: the policy
function is picked once at construction (`make_capacity_policy`, from the registry); each call
gathers the active list's columns from zero-copy views and returns slot arrays.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from tllm_sched.policies.common import CONTEXT_INIT, DISAGG_GEN_INIT, EMPTY, GEN_COMPLETE, CapacityContext, Slots, Split
from tllm_sched.registry import resolve_capacity_policy

# A policy returns (scheduled, paused) list positions; `scheduled` may be a slice (a prefix), from a
# split path the fitting list itself as a Split, or every output as Slots (a C++ loop's).
CapacityPolicy = Callable[[CapacityContext], tuple]


def make_capacity_policy(policy: str, has_kv_cache_manager: bool) -> CapacityPolicy:
    """The policy function: no KV cache means the max-requests path."""
    return resolve_capacity_policy(policy, has_kv_cache_manager).python


class PyCapacityScheduler:
    """Capacity scheduling over request slots."""

    def __init__(self, cols: dict, table, max_num_requests: int, policy: str, kv_cache_manager=None,
                 peft_cache_manager=None, cross_kv_cache_manager=None, two_steps_look_ahead: bool = False,
                 no_schedule_until_state: int = CONTEXT_INIT, no_schedule_after_state: int = GEN_COMPLETE,
                 reuse: bool = False, max_device_pages: Optional[int] = None, counter=None):
        """The managers may be counting proxies; `counter` counts the module-level C++ calls too."""
        if max_num_requests <= 0:
            raise ValueError(f"max_num_requests must be positive, got {max_num_requests}")
        entry = resolve_capacity_policy(policy, kv_cache_manager is not None)
        self._policy, self._fused = entry.python, entry.fused  # picked once
        self._ctx = CapacityContext(
            cols, kv=kv_cache_manager, cross_kv=cross_kv_cache_manager, peft=peft_cache_manager, table=table,
            max_num_requests=max_num_requests, two_steps_look_ahead=two_steps_look_ahead,
            no_schedule_until_state=no_schedule_until_state, no_schedule_after_state=no_schedule_after_state,
            reuse=reuse, max_device_pages=max_device_pages, counter=counter,
        )

    def schedule(self, slots: np.ndarray):
        """(fitting, fitting_disagg_gen_init, paused) slot arrays."""
        return self.schedule_split(slots)[:3]

    def schedule_split(self, slots: Optional[np.ndarray], active=None):
        """`schedule` plus the Split of the fitting list when it comes for free (else None),
        for the micro-batch stage. Given the RequestList `active` instead of `slots` (None), the
        list is read only by a policy's Python path (CapacityContext.read_slots)."""
        ctx = self._ctx.reset(slots, active)
        scheduled, paused = self._policy(ctx)
        if isinstance(scheduled, Split):  # a split path's fitting list (nothing paused)
            return scheduled.slots, EMPTY, EMPTY, scheduled
        return self._to_slots(ctx, scheduled, paused)

    def schedule_fused(self, slots: np.ndarray, budget, inflight_ids):
        """The fused pass's capacity loop: (fitting, fitting_disagg_gen_init, paused), asking the
        TokenBudget `budget` (policies/fused.py), reset here for this step; its `finalize` ends the step."""
        ctx = self._ctx.reset(slots)
        scheduled, paused = self._fused(ctx, budget.reset(ctx, inflight_ids))
        if isinstance(scheduled, slice):  # the serving step: a prefix of the list
            return slots[scheduled], EMPTY, EMPTY
        return self._to_slots(ctx, scheduled, paused)[:3]

    @staticmethod
    def _to_slots(ctx, scheduled, paused):
        """A policy's positions as (fitting, disagg, paused) slot arrays and the fitting Split (or None)."""
        if isinstance(scheduled, Split):
            return scheduled.slots, EMPTY, EMPTY, scheduled
        if isinstance(scheduled, Slots):  # already slot arrays (a C++ loop's output): the list is not read
            return scheduled
        slots = ctx.slots
        if isinstance(scheduled, slice):  # a prefix of the list: views, no copies
            whole = scheduled.stop >= slots.size
            return slots[scheduled], EMPTY, EMPTY, ctx.split if whole else None
        disagg = ctx.state.take(scheduled) == DISAGG_GEN_INIT
        if not np.count_nonzero(disagg):
            return slots.take(scheduled), EMPTY, slots.take(paused), None
        return slots.take(scheduled[~disagg]), slots.take(scheduled[disagg]), slots.take(paused), None
