"""tllm_sched: host-side LLM batch scheduling with TensorRT-LLM semantics.

The C++ core (request table, KV-cache block manager, reference schedulers) lives in
`tllm_sched._core`; the Python scheduler in `tllm_sched.scheduler`. Importing this package
imports neither torch nor anything heavy beyond numpy's core.
"""

try:
    import tllm_sched._core  # noqa: E402, F401
except ModuleNotFoundError as _e:  # a source checkout nobody built: say what to do
    if _e.name != "tllm_sched._core":
        raise
    raise ModuleNotFoundError(
        "tllm_sched._core, the package's C++ extension, is not built: build/install the package first: "
        "pip install .  (for development: pip install --no-build-isolation -e .)", name=_e.name) from None

from tllm_sched._core import (  # noqa: E402
    CapacityScheduler,
    CapacitySchedulerPolicy,
    ContextChunkingPolicy,
    Executor,
    KVCacheManager,
    LlmRequest,
    LlmRequestState,
    MicroBatchScheduler,
    PeftCacheManager,
    RequestList,
    RequestTable,
    Scheduler,
    SchedulingError,
    SimExecutor,
    WaitingQueue,
    WaitingQueuePolicy,
    set_ctx_requests_chunk_size,
)

__version__ = "0.1.0"

__all__ = [
    "CapacityScheduler",
    "CapacitySchedulerPolicy",
    "ContextChunkingPolicy",
    "Executor",
    "KVCacheManager",
    "LlmRequest",
    "LlmRequestState",
    "MicroBatchScheduler",
    "PeftCacheManager",
    "RequestList",
    "RequestTable",
    "Scheduler",
    "SchedulingError",
    "SimExecutor",
    "WaitingQueue",
    "WaitingQueuePolicy",
    "set_ctx_requests_chunk_size",
]
