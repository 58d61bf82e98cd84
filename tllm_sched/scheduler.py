"""tllm_sched/scheduler.py: one scheduling step (capacity, then micro-batch) on a chosen backend.

C++ twin: ext/scheduler.h (`Scheduler`). Mirrors TensorRT-LLM's `SimpleScheduler` /
`SimpleUnifiedScheduler`: the capacity scheduler picks the requests that get KV blocks and LoRA
pages, the micro-batch scheduler picks this step's batch among them. With `config.fused` the two
run as TensorRT-LLM's 2026 `UnifiedScheduler` does, in one pass (design.md, "The fused mode").
With `config.waiting_queue_policy` the scheduler owns a waiting queue (`waiting_queue`), and each
step first moves the waiting requests there is room for to the end of the active list.

Backends, chosen once at construction:
  - "cpp": the reference C++ schedulers (one crossing per step);
  - "python": the batched Python scheduler (`tllm_sched.policies`), a few crossings per step;
  - "python-naive": the same policies structured like TensorRT-LLM's first Python port, with
    per-request property reads and cache queries; a baseline showing what batching buys.
All three make identical decisions. Outputs are arrays of request slots.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.backend import SchedulerBackend, SchedulerOutput, list_slots, list_table
from tllm_sched.config import SchedulerConfig
from tllm_sched.crossings import Counter, CountingProxy
from tllm_sched.naive.scheduler import NaiveBackend
from tllm_sched.py_scheduler import PythonBackend
from tllm_sched.waiting_queue import make_waiting_queue

__all__ = ["BACKENDS", "Scheduler", "SchedulerOutput", "make_backend"]


def chunking_policy(config: SchedulerConfig) -> Optional[_core.ContextChunkingPolicy]:
    """The C++ enum of the configured chunking policy, or None without chunking."""
    if config.chunking is None:
        return None
    return getattr(_core.ContextChunkingPolicy, config.chunking.policy)


def capacity_policy(config: SchedulerConfig) -> _core.CapacitySchedulerPolicy:
    try:
        return getattr(_core.CapacitySchedulerPolicy, config.policy)
    except AttributeError:
        raise ValueError(f"unknown capacity scheduler policy {config.policy!r}") from None


class _CppBackend:
    """The reference C++ schedulers behind one-call-per-stage bindings."""

    def __init__(self, config, table, kv, cross_kv, peft, counter=None, waiting=None):
        self.config = config
        self._table, self._kv, self._cross, self._peft = table, kv, cross_kv, peft
        self._capacity = _core.CapacityScheduler(
            config.max_num_requests, capacity_policy(config), kv is not None, config.two_steps_look_ahead
        )
        policy = chunking_policy(config)
        chunk_cfg = None if policy is None else (policy, config.chunking.unit_size)
        self._micro = _core.MicroBatchScheduler(chunk_cfg, config.max_context_length)
        self._step = _core.Scheduler(
            self._capacity, self._micro, table, kv, cross_kv, peft, config.max_batch_size, config.max_num_tokens,
            fused=config.fused, waiting_queue=waiting, max_num_active_requests=config.max_num_active_requests,
        )
        self._max_batch_size = config.max_batch_size
        self._max_num_tokens = config.max_num_tokens
        if counter is not None:
            self._step = CountingProxy(self._step, counter)
            self._capacity = CountingProxy(self._capacity, counter)
            self._micro = CountingProxy(self._micro, counter)

    def schedule(self, active, inflight_ids):
        return SchedulerOutput(*self._step.schedule(active, inflight_ids, self.config.fused))

    def fetch_new_requests(self, active):
        return self._step.fetch_new_requests(active)

    def schedule_capacity(self, slots):
        return self._capacity.schedule(self._table, slots, self._kv, self._peft, self._cross)

    def schedule_micro(self, slots, inflight_ids):
        return self._micro.schedule(self._table, slots, inflight_ids, self._max_batch_size, self._max_num_tokens)

    def set_ctx_requests_chunk_size(self, slots):
        cfg = self.config
        _core.set_ctx_requests_chunk_size(self._table, slots, chunking_policy(cfg), cfg.max_num_tokens,
                                          cfg.chunking.unit_size, cfg.max_context_length)


# The backends, by name: the command lines' choices and the tests' parametrisation derive from it.
_BACKEND_CLASSES = {"cpp": _CppBackend, "python": PythonBackend, "python-naive": NaiveBackend}
BACKENDS = tuple(_BACKEND_CLASSES)


def make_backend(backend: str, config: SchedulerConfig, table, kv, cross_kv, peft,
                 counter: Optional[Counter] = None, waiting: Optional[_core.WaitingQueue] = None) -> SchedulerBackend:
    """The backend `backend` (a name of BACKENDS) over these managers and waiting queue (None:
    none); `counter` counts its Python -> C++ calls."""
    _check_backend(backend)
    return _BACKEND_CLASSES[backend](config, table, kv, cross_kv, peft, counter, waiting)


def _check_backend(backend: str) -> None:
    if backend not in _BACKEND_CLASSES:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def _check_type(value, name: str, cls, optional: bool = False) -> None:
    """TypeError naming the expected type, for a wrong object given as config, table or manager."""
    if (value is None and optional) or isinstance(value, cls):
        return
    expected = f"a {cls.__name__}" + (" or None" if optional else "")
    hint = ""
    if isinstance(value, str) and value in BACKENDS:
        hint = f"; the backend is a keyword argument: Scheduler(config, table, kv, backend={value!r})"
    shown = f" {value!r}" if isinstance(value, str) else ""
    raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}{shown}{hint}")


def _check_managers(table, kv, cross_kv, peft) -> None:
    """Each manager of the right type and over `table` (what the C++ Scheduler refuses, with its
    messages), so every backend refuses the same."""
    _check_type(table, "table", _core.RequestTable)
    for name, manager in (("kv_cache_manager", kv), ("cross_kv_cache_manager", cross_kv)):
        _check_type(manager, name, _core.KVCacheManager, optional=True)
        if manager is not None and manager.table is not table:
            raise ValueError(f"{name} belongs to another RequestTable")
    _check_type(peft, "peft_cache_manager", _core.PeftCacheManager, optional=True)


def describe(obj) -> str:
    """What was given instead of an array, worded as the bindings word it (ext/bindings/arrays.h)."""
    if not isinstance(obj, np.ndarray):
        t = type(obj)
        return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if obj.dtype.byteorder == ">":
        return (f"a big-endian numpy array (dtype {obj.dtype.str}); convert it with "
                ".astype(its dtype.newbyteorder('='))")
    return f"a numpy array of dtype {obj.dtype}"


def _checked_array(arr, name: str, dtype, expected: str) -> np.ndarray:
    """`arr` as the C++ bindings take arrays: 1-D, C-contiguous, of `dtype`, never converted.
    Raises TypeError naming `name` and what was given (as the bindings do)."""
    if not isinstance(arr, np.ndarray) or arr.dtype.byteorder == ">":
        raise TypeError(f"{name}: expected {expected}, got {describe(arr)}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected a numpy array of dtype {np.dtype(dtype)} (no silent conversion), "
                        f"got {arr.dtype}")
    if arr.ndim != 1:
        raise TypeError(f"{name}: expected a 1-D array, got {arr.ndim}-D")
    if not arr.flags.c_contiguous:
        raise TypeError(f"{name}: array must be C-contiguous (no silent copies); use np.ascontiguousarray")
    return arr


_NOT_SEEN = object()  # no RequestList checked yet (None must be checked like any other value)


def _slot_array(slots, name: str) -> np.ndarray:
    return _checked_array(slots, name, np.int32, "a RequestList or an int32 array of slots")


def _inflight_ids(ids) -> Optional[np.ndarray]:
    """None or the int64 ids the C++ binding's `inflight_ids` takes."""
    if ids is None:
        return None
    return _checked_array(ids, "inflight_request_ids", np.int64, "an int64 numpy array or None")


class Scheduler:
    """Capacity + micro-batch scheduling over one `RequestTable`, on one backend.

    Inputs are validated as the C++ bindings validate them, whatever the backend: slot arrays are
    1-D C-contiguous int32 numpy arrays of live requests of the table, inflight ids None or a 1-D
    C-contiguous int64 array, a RequestList must belong to the table (TypeError for a wrong type or
    dtype, ValueError for a wrong value). The facade checks types on every backend (so a torch
    tensor, which the bindings would take through DLPack, is refused alike); the cpp backend's
    bindings check liveness for themselves, and for the Python backends the facade checks it with
    numpy (the live check reads the zero-copy request_id column). `schedule` checks a RequestList, on every backend, only the
    first time it sees it (a list cannot change tables), so a steady step costs no extra crossing."""

    def __init__(
        self,
        config: SchedulerConfig,
        table: _core.RequestTable,
        kv_cache_manager: Optional[_core.KVCacheManager] = None,
        cross_kv_cache_manager: Optional[_core.KVCacheManager] = None,
        peft_cache_manager: Optional[_core.PeftCacheManager] = None,
        *,
        backend: str = "cpp",
        count_crossings: bool = False,
    ):
        _check_backend(backend)
        _check_type(config, "config", SchedulerConfig)  # validated where it was built
        _check_managers(table, kv_cache_manager, cross_kv_cache_manager, peft_cache_manager)
        self.waiting_queue: Optional[_core.WaitingQueue] = None  # requests waiting to become active
        if config.waiting_queue_policy is not None:
            self.waiting_queue = make_waiting_queue(config.waiting_queue_policy, table)
        self.config = config
        self.backend = backend
        self.table = table
        self._counter = None
        if count_crossings:
            self._counter = Counter()
        self.last_step_crossings: Optional[int] = None  # set by schedule() when counting
        managers = (kv_cache_manager, cross_kv_cache_manager, peft_cache_manager)
        self._checked = backend != "cpp"  # the cpp bindings validate slots and ids for themselves
        self._list: Optional[_core.RequestList] = _NOT_SEEN  # the last RequestList found to be of `table`
        if self._checked:
            self._ids = table.columns()["request_id"]  # zero-copy, read-only; -1 in a dead slot
        self._impl = make_backend(backend, config, table, *managers, counter=self._counter, waiting=self.waiting_queue)

    # ------------------------------------------------------------------ input checks
    def _check_list(self, active) -> None:
        """`active` is a RequestList of this table. Remembered, so each list costs one check."""
        if not isinstance(active, _core.RequestList):
            raise TypeError(f"active_requests: expected a RequestList, got {type(active).__name__}")
        if list_table(active) is not self.table:
            raise ValueError("the RequestList belongs to another RequestTable")
        self._list = active

    def _check_live(self, slots: np.ndarray) -> None:
        """Every slot holds a live request of the table (RequestTable::check_slot)."""
        if slots.size == 0:
            return
        lo, hi = int(slots.min()), int(slots.max())
        if lo < 0 or hi >= self._ids.size:
            raise ValueError(f"slot {lo if lo < 0 else hi} holds no live request")
        dead = self._ids.take(slots) < 0
        if dead.any():
            raise ValueError(f"slot {int(slots[dead.argmax()])} holds no live request")

    def _active_slots(self, active) -> np.ndarray:
        """The stage APIs' `active_requests`: a RequestList of the table or an array of distinct
        live slots (the bindings' `list_or_slots`)."""
        if isinstance(active, _core.RequestList):
            if active is not self._list:
                self._check_list(active)
            return list_slots(active) if self._checked else active
        slots = _slot_array(active, "active_requests")  # the type on every backend: same message
        if not self._checked:
            return slots
        self._check_live(slots)
        if slots.size > 1:
            uniq, counts = np.unique(slots, return_counts=True)
            if uniq.size != slots.size:
                raise ValueError(f"active_requests: slot {int(uniq[counts.argmax()])} is listed twice")
        return slots

    # ------------------------------------------------------------------ the API
    def schedule(self, active: _core.RequestList, inflight_ids: Optional[np.ndarray] = None) -> SchedulerOutput:
        """One full step: with a waiting queue, first the waiting requests there is room for join
        the end of `active` (fetch_new_requests); then capacity over `active` and micro-batch over
        the fitting requests, or (config.fused) the fused pass. With `count_crossings`,
        `last_step_crossings` then holds the Python -> C++ calls it made."""
        if active is not self._list:  # a list once found to be of the table stays so: no crossing
            self._check_list(active)
        if inflight_ids is not None:
            _inflight_ids(inflight_ids)
        if self._counter is None:
            return self._impl.schedule(active, inflight_ids)
        self._counter.n = 0
        out = self._impl.schedule(active, inflight_ids)
        self.last_step_crossings = self._counter.n
        return out

    def fetch_new_requests(self, active: _core.RequestList) -> int:
        """Moves the waiting requests there is room for (config.max_num_active_requests minus
        len(active)) to the end of `active`, in the queue's order; how many. `schedule` does this
        first; calling it before lets a caller see the list the step will schedule."""
        if active is not self._list:
            self._check_list(active)
        return self._impl.fetch_new_requests(active)

    def schedule_capacity(self, slots: np.ndarray):
        """Capacity stage alone: (fitting, fitting_disagg_gen_init, paused) slot arrays (the
        two-stage mode's first stage, whatever config.fused)."""
        return self._impl.schedule_capacity(self._active_slots(slots))

    def schedule_micro(self, slots: np.ndarray, inflight_ids: Optional[np.ndarray] = None):
        """Micro-batch stage alone over `slots`: (context, generation) slot arrays."""
        slots = self._active_slots(slots)
        return self._impl.schedule_micro(slots, _inflight_ids(inflight_ids))

    def set_ctx_requests_chunk_size(self, slots: np.ndarray) -> None:
        """Sets the chunk sizes of the context requests `slots` directly under the configured
        chunking policy, with max_num_tokens as the capacity (TensorRT-LLM's setCtxRequestsChunkSize)."""
        if self.config.chunking is None:
            raise ValueError("set_ctx_requests_chunk_size needs a chunking policy in the scheduler config")
        slots = _slot_array(slots, "slots")
        if self._checked:
            self._check_live(slots)
        self._impl.set_ctx_requests_chunk_size(slots)
