"""tllm_sched/policies: the batched Python scheduler, one module per policy.

C++ twins: ext/policies/*.cpp. Each capacity policy is a function
`schedule(ctx: CapacityContext) -> (scheduled, paused)` returning positions in the active list (an
int array, or a slice when the admitted requests are a prefix); capacity_scheduler.py maps them
to request slots.
"""
