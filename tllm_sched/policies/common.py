"""tllm_sched/policies/common.py: what every policy shares: state codes, gating, the step context.

C++ twin: ext/policies/common.h. `StepContext` holds the columns of the active list, gathered once
per step from zero-copy views (no crossing), and the managers the policies may query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from tllm_sched import _core

S = _core.LlmRequestState
ENCODER_INIT = int(S.ENCODER_INIT)
DISAGG_GEN_INIT = int(S.DISAGG_GENERATION_INIT)
CONTEXT_INIT = int(S.CONTEXT_INIT)
DISAGG_CTX_INIT_AND_TRANS = int(S.DISAGG_CONTEXT_INIT_AND_TRANS)
DISAGG_GEN_TRANS_COMPLETE = int(S.DISAGG_GENERATION_TRANS_COMPLETE)
GEN_IN_PROGRESS = int(S.GENERATION_IN_PROGRESS)
GEN_TO_COMPLETE = int(S.GENERATION_TO_COMPLETE)
GEN_COMPLETE = int(S.GENERATION_COMPLETE)

EMPTY = np.zeros(0, dtype=np.int32)
EMPTY.flags.writeable = False


def is_context_init(st: np.ndarray) -> np.ndarray:
    return (st == CONTEXT_INIT) | (st == DISAGG_CTX_INIT_AND_TRANS)


def is_generation_in_progress(st: np.ndarray) -> np.ndarray:
    return (st == GEN_IN_PROGRESS) | (st == GEN_TO_COMPLETE) | (st == DISAGG_GEN_TRANS_COMPLETE)


@dataclass(slots=True)
class StepContext:
    """One capacity-scheduling call: the active list's columns and the managers."""

    slots: np.ndarray  # int32 slots of the active list, in order
    ids: np.ndarray  # int64 request ids per list entry
    state: np.ndarray  # state per list entry
    first_chunk: np.ndarray  # bool: context position == prepopulated length
    lora: np.ndarray  # int64 LoRA task id, -1 for none
    kv: Any  # self KVCacheManager (maybe a counting proxy) or None
    cross_kv: Any  # cross KVCacheManager or None
    peft: Any  # PeftCacheManager or None
    table: Any  # RequestTable (maybe a counting proxy)
    max_num_requests: int  # admission count limit
    two_steps_look_ahead: bool  # MAX_UTILIZATION: reserve two steps
    until: int  # gating window start (inclusive)
    after: int  # gating window end (exclusive)
    reuse: bool  # the self cache has block reuse on
    max_device_pages: Optional[int]  # PEFT capacity, None without PEFT

    def schedulable(self) -> np.ndarray:
        return (self.state >= self.until) & (self.state < self.after)

    def schedulable_with_disagg_exception(self) -> np.ndarray:
        return self.schedulable() | (self.state == DISAGG_GEN_INIT)

    def pages(self, idx: np.ndarray) -> np.ndarray:
        """LoRA pages of the requests at list positions `idx` (one crossing; zeros without PEFT)."""
        if self.peft is None or idx.size == 0:
            return np.zeros(idx.size, dtype=np.int64)
        return self.peft.determine_num_pages_batch(self.table, self.slots[idx]).astype(np.int64)


def new_task_pages(lora: np.ndarray, pages: np.ndarray, seen: set) -> np.ndarray:
    """Pages each request adds when admitted in order: only the first request of a task not in
    `seen` pays. Pure: `seen` is not changed."""
    out = np.zeros(lora.size, dtype=np.int64)
    has = lora >= 0
    if not has.any():
        return out
    _, first = np.unique(lora, return_index=True)
    first_mask = np.zeros(lora.size, dtype=bool)
    first_mask[first] = True
    pay = first_mask & has
    if seen:
        pay &= ~np.isin(lora, np.fromiter(seen, dtype=np.int64, count=len(seen)))
    out[pay] = pages[pay]
    return out
