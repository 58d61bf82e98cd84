"""tllm_sched: host-side LLM batch scheduling with TensorRT-LLM semantics.

The C++ core (request table, KV-cache block manager, reference schedulers) lives in
`tllm_sched._core`; the Python scheduler in `tllm_sched.scheduler`. Importing this package
imports neither torch nor anything heavy beyond numpy's core.
"""

import os as _os
import sys as _sys


def _add_installed_extension_dir() -> None:
    """Running from a source checkout (say `python -m tllm_sched bench` in the repository root
    after `pip install .`) puts the checkout first on sys.path, and its tllm_sched/ has no built
    extension. The installed copy of this package (same code) has one: let the package find
    `_core` there. Never raises; does nothing when no installed copy exists."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    if any(name.startswith("_core.") for name in _os.listdir(here)):
        return
    for entry in _sys.path:
        candidate = _os.path.join(entry or _os.getcwd(), "tllm_sched")
        if _os.path.abspath(candidate) == here or not _os.path.isdir(candidate):
            continue
        if any(name.startswith("_core.") and name.endswith((".so", ".pyd")) for name in _os.listdir(candidate)):
            __path__.append(candidate)
            return


_add_installed_extension_dir()

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
    SchedulingError,
    SimExecutor,
    StepScheduler,
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
    "SchedulingError",
    "SimExecutor",
    "StepScheduler",
    "set_ctx_requests_chunk_size",
]
