"""tllm_sched: host-side LLM batch scheduling with TensorRT-LLM semantics.

The C++ core (request table, KV-cache block manager, reference schedulers) lives in
`tllm_sched._core`; the Python scheduler in `tllm_sched.scheduler`. Importing this package
imports neither torch nor anything heavy beyond numpy's core.
"""

from tllm_sched._core import (
    CapacityScheduler,
    CapacitySchedulerPolicy,
    ContextChunkingPolicy,
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
