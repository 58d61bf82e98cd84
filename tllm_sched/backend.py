"""tllm_sched/backend.py: what a scheduler backend provides, and what one step returns.

`Scheduler` (scheduler.py) validates inputs and delegates to one backend, built by
`scheduler.make_backend`; every backend ("cpp", "python", "python-naive") implements
`SchedulerBackend` and makes the same decisions. Outputs are arrays of request slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Tuple

import numpy as np

from tllm_sched import _core

__all__ = ["SchedulerBackend", "SchedulerOutput", "list_requests", "list_slots", "list_table"]

# What a backend reads of a RequestList, through the C++ methods: a Python subclass may override
# `slots`, `requests` or `table`, but every backend schedules what the C++ list holds, as the cpp
# backend does.
list_slots = _core.RequestList.slots.fget
list_table = _core.RequestList.table.fget
list_requests = _core.RequestList.requests

_EMPTY = np.zeros(0, dtype=np.int32)
_EMPTY.flags.writeable = False


@dataclass(slots=True, init=False)
class SchedulerOutput:
    """One step's decisions, as request slots of the table."""

    fitting: np.ndarray  # admitted by the capacity scheduler (not disagg-gen-init), admission order
    fitting_disagg_gen_init: np.ndarray  # admitted disagg-generation-init requests
    paused: np.ndarray  # MAX_UTILIZATION victims, in pausing order
    context: np.ndarray  # micro-batch context requests, output order
    generation: np.ndarray  # micro-batch generation requests, output order
    # TensorRT-LLM's num_fitting_requests: two-stage, len(fitting) (None becomes that); fused, the
    # requests that passed both the capacity and the token-budget checks.
    num_fitting: Optional[int] = None

    def __init__(self, fitting: np.ndarray, fitting_disagg_gen_init: np.ndarray, paused: np.ndarray,
                 context: np.ndarray, generation: np.ndarray, num_fitting: Optional[int] = None) -> None:
        # Written out, not generated with a __post_init__: one frame a step, not two.
        self.fitting, self.fitting_disagg_gen_init, self.paused = fitting, fitting_disagg_gen_init, paused
        self.context, self.generation = context, generation
        self.num_fitting = int(fitting.size) if num_fitting is None else num_fitting

    @classmethod
    def make_empty(cls) -> "SchedulerOutput":
        return cls(_EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, 0)


class SchedulerBackend(Protocol):
    """The calls `Scheduler` makes of a backend, with inputs already validated: `slots` is a
    1-D C-contiguous int32 array of distinct live slots, `inflight_ids` None or an int64 array.
    A backend is built with the scheduler's waiting queue (or None)."""

    def schedule(self, active, inflight_ids: Optional[np.ndarray]) -> SchedulerOutput:
        """One full step over the RequestList `active`: first the waiting requests there is room
        for join it, then capacity and micro-batch (two-stage) or the fused pass."""

    def fetch_new_requests(self, active) -> int:
        """Moves the waiting requests there is room for to the end of `active`; how many."""

    def schedule_capacity(self, slots: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fitting, fitting_disagg_gen_init, paused) slot arrays."""

    def schedule_micro(self, slots: np.ndarray,
                       inflight_ids: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """(context, generation) slot arrays; commits chunk sizes and draft discards."""

    def set_ctx_requests_chunk_size(self, slots: np.ndarray) -> None:
        """Chunk sizes of the context requests `slots` under the configured chunking policy."""
