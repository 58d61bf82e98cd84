"""tllm_sched/policies/common.py: what every policy shares: state codes, gating, the step context.

C++ twin: ext/policies/common.h. `CapacityContext` holds the columns of the active list, gathered once
per step from zero-copy views (no crossing), and the managers the policies may query. `Split`
separates the running generations from the other requests for the policies' split paths.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.backend import list_slots
from tllm_sched.crossings import counted

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
NO_POSITIONS = np.zeros(0, dtype=np.intp)
NO_POSITIONS.flags.writeable = False


class Split:
    """A slot list seen as its running generations (state GENERATION_IN_PROGRESS, the bulk of a
    serving batch) and the rest ("others": contexts and any other state, usually few).

    The policies' split paths treat the generations as one block, a handful of whole-array
    operations, and touch the others only through arrays of their size. The capacity stage
    hands the split of its fitting list to the micro-batch stage, so it is computed once a step.
    """

    __slots__ = ("slots", "other", "other_state", "contexts", "tail", "gens")

    def __init__(self, slots: np.ndarray, other: np.ndarray = None, other_state: np.ndarray = None,
                 state: np.ndarray = None, gens: np.ndarray = None, contexts: np.ndarray = None, tail: bool = True):
        """Given only `gens` and `contexts` (slots), the split of a list of running generations and
        contexts (a C++ loop's output): no array work. Positions and states of the others are then
        not known (None); the micro-batch stage, its user, reads `gens` and `contexts` only."""
        self.slots = slots  # the list, in order
        self.other = other  # ascending list positions of the others (None: not known)
        self.other_state = other_state  # their states (None: not known)
        self.contexts = contexts  # slots of the others when all are known contexts, else None
        # The others are the end of the list (new requests are appended): slices, no copies.
        # A fitting list built as generations then contexts always is.
        self.tail = tail
        # Slots of the running generations, in list order: an attribute, not a property (a frame
        # a step); from `state` (per entry) unless given.
        self.gens = gens if gens is not None else (
            slots[:slots.size - other.size] if tail else slots[state == GEN_IN_PROGRESS])

    @classmethod
    def of_parts(cls, slots: np.ndarray, gens: np.ndarray, contexts: np.ndarray) -> "Split":
        """`Split(slots, gens=gens, contexts=contexts)` for a C++ loop's output, built without the
        constructor's call machinery (keyword matching, type call): a cold step pays for it."""
        sp = object.__new__(cls)
        sp.slots, sp.gens, sp.contexts, sp.other, sp.other_state, sp.tail = slots, gens, contexts, None, None, True
        return sp

    @classmethod
    def of(cls, slots: np.ndarray, state: np.ndarray) -> "Split":
        other = (state != GEN_IN_PROGRESS).nonzero()[0]
        if other.size == 0:
            return cls(slots, NO_POSITIONS, EMPTY, gens=slots)
        return cls(slots, other, state.take(other), state=state, tail=int(other[0]) == slots.size - other.size)

    def other_slots(self) -> np.ndarray:
        """Slots of the others, in list order."""
        return self.slots[self.slots.size - self.other.size:] if self.tail else self.slots.take(self.other)


class Slots(NamedTuple):
    """A policy's decisions already as slot arrays (a C++ loop's output, capacity_scheduler.py),
    with the fitting list's Split when the loop gave it (else None)."""

    fitting: np.ndarray
    fitting_disagg_gen_init: np.ndarray
    paused: np.ndarray
    split: Optional[Split] = None


# Kinds of state, for classifying a split's others with a lookup table instead of a chain of
# comparisons. Tables are indexed by state; the last entry serves DISAGG_TRANS_ERROR (-1), as
# negative indices wrap in both `take` and Python lists.
IGNORED, CONTEXT, GENERATION, OTHER = range(4)  # capacity kinds (GENERATION: 12..14)
FEW = 16  # below this many states, counting in plain Python beats two array calls
HEAD = 8  # prefix_within scans this many values in plain Python before the array operations


class KindTable:
    """A kind (small int) per request state."""

    def __init__(self, kind_of, n_kinds: int):
        states = [int(v) for v in S.__members__.values()]
        self.n_kinds = n_kinds
        self.array = np.zeros(max(states) + 2, dtype=np.intp)
        for st in states:
            self.array[st] = kind_of(st)
        self.list = self.array.tolist()

    def of(self, states: np.ndarray) -> np.ndarray:
        return self.array.take(states)

    def count(self, states: np.ndarray) -> list:
        """How many of `states` are of each kind."""
        counts, table = [0] * self.n_kinds, self.list
        if states.size < FEW or not states.size:
            for st in states.tolist():
                counts[table[st]] += 1
            return counts
        # Many: usually all in one state (a queue of waiting contexts), one comparison says so.
        # Few distinct array functions: the first call of each in a step runs cold (np.bincount
        # would also be slow).
        first = int(states[0])
        if np.count_nonzero(states == first) == states.size:
            counts[table[first]] = states.size
            return counts
        kinds = self.array.take(states)
        for k in range(self.n_kinds):
            counts[k] = np.count_nonzero(kinds == k)
        return counts


def prefix_within(values: np.ndarray, limit: int, head: int = HEAD) -> int:
    """How many leading `values` fit in `limit` in order: up to the first running total over
    `limit` (head-of-line, as the C++ loops stop). A plain loop over the first `head` (a full cache
    often stops admission there), whole-array operations for the rest."""
    total = 0
    first = values[:head].tolist() if values.size > head else values.tolist()
    for k, v in enumerate(first):
        total += v
        if total > limit:
            return k
    if values.size <= head:
        return values.size
    rest = values[head:]
    if int(rest.sum()) <= limit - total:  # all fit (a cache with room): one sum, no running totals
        return values.size
    fits = rest.cumsum() <= limit - total
    return head + (int(fits.argmin()) if not fits.all() else fits.size)


def is_context_init(st: np.ndarray) -> np.ndarray:
    return (st == CONTEXT_INIT) | (st == DISAGG_CTX_INIT_AND_TRANS)


def is_generation_in_progress(st: np.ndarray) -> np.ndarray:
    return (st == GEN_IN_PROGRESS) | (st == GEN_TO_COMPLETE) | (st == DISAGG_GEN_TRANS_COMPLETE)


class CapacityContext:
    """One capacity-scheduling call: the active list's columns and the managers.

    Columns are gathered from the zero-copy views only when a policy asks for them (`take` is
    the cheapest gather), so the common all-generation step touches just the state column; the
    states, their split and kind counts too, so a step the policy hands to one C++ call (block
    reuse) computes none of them.
    """

    __slots__ = ("cols", "slots", "listed", "_read_list", "_state", "kv", "cross_kv", "peft", "table", "max_num_requests",
                 "two_steps_look_ahead", "no_schedule_until_state", "no_schedule_after_state", "reuse", "max_device_pages", "_all_generation", "_gen_window", "plain_split", "pending_are_admissible",
                 "_split", "_kind_counts", "kinds", "_free", "_first_chunk", "_lora", "_ids",
                 "no_evict_split_fitting", "max_utilization_fitting")

    def __init__(self, cols, *, kv, cross_kv, peft, table, max_num_requests, two_steps_look_ahead,
                 no_schedule_until_state, no_schedule_after_state, reuse, max_device_pages, counter=None):
        """Built once per scheduler; `reset` points it at one step's active list."""
        self.cols = cols  # zero-copy column views of the table
        self.kv, self.cross_kv, self.peft, self.table = kv, cross_kv, peft, table  # managers (maybe proxies)
        self.max_num_requests = max_num_requests  # admission count limit
        self.two_steps_look_ahead = two_steps_look_ahead  # MAX_UTILIZATION: reserve two steps
        # gating window [no_schedule_until_state, no_schedule_after_state)
        self.no_schedule_until_state, self.no_schedule_after_state = no_schedule_until_state, no_schedule_after_state
        self.reuse = reuse  # the self cache has block reuse on
        self.max_device_pages = max_device_pages  # PEFT capacity, None without PEFT
        self._gen_window = no_schedule_until_state <= DISAGG_GEN_TRANS_COMPLETE and no_schedule_after_state > GEN_TO_COMPLETE
        # The split paths apply: running generations are pass-1 generations (gen window open)
        # and no per-request page rule is in play (a policy checks `reuse` for itself).
        self.plain_split = self._gen_window and peft is None
        # In the default window every schedulable state that is neither a generation nor
        # disagg-gen-init is a context state, so pass-2 lists need no state filter.
        self.pending_are_admissible = no_schedule_until_state >= CONTEXT_INIT and no_schedule_after_state <= GEN_COMPLETE
        self.kinds = KindTable(self._kind_of, 4)
        # The C++ loops the policies call once a step with block reuse, counted into `counter`.
        self.no_evict_split_fitting = counted(_core.no_evict_split_fitting, counter)
        self.max_utilization_fitting = counted(_core.max_utilization_fitting, counter)
        self._read_list = counted(list_slots, counter)
        # Free-block counts of the self and cross caches: zero-copy views, read without a call.
        self._free = tuple(None if m is None else m.free_block_counts() for m in (kv, cross_kv))
        self.reset(EMPTY)

    def free_blocks(self, cross: bool = False) -> int:
        """The cache's num_free_blocks, read from its zero-copy view."""
        return int(self._free[cross][0])

    def _kind_of(self, st: int) -> int:
        if not (self.no_schedule_until_state <= st < self.no_schedule_after_state or st == DISAGG_GEN_INIT):
            return IGNORED
        if is_context_init(st):
            return CONTEXT
        return GENERATION if is_generation_in_progress(st) else OTHER

    def reset(self, slots: Optional[np.ndarray], active=None) -> "CapacityContext":
        """Points the context at one step's list: the int32 slot array `slots`, or (slots None) the
        RequestList `active`. A C++ loop reads the list in place (`listed`); a policy's Python
        path calls `read_slots` first, so a step handed whole to a C++ loop makes no view."""
        self.slots = slots  # int32 slots of the active list, in order (None: not read yet)
        self.listed = active if slots is None else slots
        self._state = self._split = self._kind_counts = self._all_generation = None
        self._first_chunk = self._lora = self._ids = None
        return self

    def read_slots(self) -> None:
        """Reads the list's slots into `slots` if the step was given only its RequestList, copied:
        outputs may be slices of them and must not change when the list does."""
        if self.slots is None:
            self.slots = self._read_list(self.listed).copy()

    @property
    def state(self) -> np.ndarray:
        """int32 state per list entry."""
        if self._state is None:
            self._state = self.cols["state"].take(self.slots)
        return self._state

    @property
    def split(self) -> Split:
        """The list's running generations and others."""
        if self._split is None:
            self._split = Split.of(self.slots, self.state)
        return self._split

    @property
    def kind_counts(self) -> list:
        """How many of the others are of each capacity kind (gating)."""
        if self._kind_counts is None:
            self._kind_counts = self.kinds.count(self.split.other_state)
        return self._kind_counts

    @property
    def all_generation(self) -> bool:
        """Every entry is a generation in the gating window."""
        if self._all_generation is None:
            self._all_generation = bool(self.slots.size and self._gen_window
                                        and self.kind_counts[GENERATION] == self.split.other.size)
        return self._all_generation

    @property
    def first_chunk(self) -> np.ndarray:
        """bool: context position == prepopulated length."""
        if self._first_chunk is None:
            c = self.cols
            self._first_chunk = c["context_current_position"].take(self.slots) == c["prepopulated_prompt_len"].take(self.slots)
        return self._first_chunk

    @property
    def lora(self) -> np.ndarray:
        """int64 LoRA task id per entry, -1 for none."""
        if self._lora is None:
            self._lora = self.cols["lora_task_id"].take(self.slots)
        return self._lora

    @property
    def ids(self) -> np.ndarray:
        """int64 request id per entry."""
        if self._ids is None:
            self._ids = self.cols["request_id"].take(self.slots)
        return self._ids

    def can_be_scheduled(self) -> np.ndarray:
        return (self.state >= self.no_schedule_until_state) & (self.state < self.no_schedule_after_state)

    def can_be_scheduled_with_disagg_exception(self) -> np.ndarray:
        return self.can_be_scheduled() | (self.state == DISAGG_GEN_INIT)

    def pages(self, idx: np.ndarray) -> np.ndarray:
        """LoRA pages of the requests at list positions `idx` (one crossing; zeros without PEFT)."""
        if self.peft is None or idx.size == 0:
            return np.zeros(idx.size, dtype=np.int64)
        return self.peft.determine_num_pages_batch(self.table, self.slots[idx]).astype(np.int64)


def task_ids(lora: np.ndarray) -> set:
    """Distinct LoRA task ids among `lora` (vectorised: no per-request Python loop)."""
    have = lora[lora >= 0]
    return set(np.unique(have).tolist()) if have.size else set()


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
