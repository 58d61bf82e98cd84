"""tllm_sched/policies: the batched Python scheduler, one module per policy.

C++ twins: ext/policies/*.cpp. Each capacity policy is a function
`schedule(ctx: StepContext) -> (scheduled, paused)` over numpy arrays of request slots.
"""
