"""tllm_sched/naive/common.py: what the python-naive policies share: the capacity context.

C++ twin: ext/policies/common.h (`CapacityContext`, `can_be_scheduled`,
`can_be_scheduled_with_disagg_exception`). Every question is asked of a request handle, one
crossing each, as TensorRT-LLM's first Python port does.
"""

from __future__ import annotations

from tllm_sched.policies.common import CONTEXT_INIT, DISAGG_GEN_INIT, GEN_COMPLETE

INT32_MAX = 2**31 - 1


class CapacityContext:
    """One backend's capacity inputs: the managers (maybe counting proxies) and the limits."""

    def __init__(self, config, kv, cross_kv, peft):
        self.kv, self.cross_kv, self.peft = kv, cross_kv, peft  # managers, None when absent
        self.max_num_requests = config.max_num_requests  # admission count limit
        self.two_steps_look_ahead = config.two_steps_look_ahead  # MAX_UTILIZATION: reserve two steps
        self.no_schedule_until_state, self.no_schedule_after_state = CONTEXT_INIT, GEN_COMPLETE  # gating window

    def can_be_scheduled(self, r) -> bool:
        return self.no_schedule_until_state <= r.state_value < self.no_schedule_after_state

    def can_be_scheduled_with_disagg_exception(self, r) -> bool:
        """Disagg-generation-init requests bypass the window so that their KV cache gets allocated."""
        st = r.state_value
        return st == DISAGG_GEN_INIT or self.no_schedule_until_state <= st < self.no_schedule_after_state
