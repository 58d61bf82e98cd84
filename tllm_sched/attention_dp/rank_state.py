"""tllm_sched/attention_dp/rank_state.py: the per-rank state record of attention data parallelism.

Every step each rank packs one fixed-length int64 record, the ranks all-gather the records once
(the step's only collective), and every rank parses the same gathered (world_size, length) array,
so every rank routes from identical inputs. TensorRT-LLM's twin is `RankState` in
scheduler/rank_state.py (rank, active requests, active tokens, iteration stats as a flat int list);
this record adds what one collective must carry for the whole step: the scheduled context and
generation counts (context balancing, TensorRT-LLM's second all_gather) and the prefix match
length of every queued request on this rank's reuse tree (the KV-cache-aware router, TensorRT-LLM's
third). Layout (`Field`): a header of HEADER_LEN values, then `match_slots` match lengths, one
per request at the head of the waiting queue, which every rank holds identically (none when the
router needs no match lengths: QUEUE_LEN and QUEUE_DIGEST still check that the queues agree).

A record that does not parse (another version, another length, a rank out of place, another
step or queue) is refused with `RankStateError` naming the rank; a record a failing rank sent
instead of its state raises `RankFailure` on every other rank.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Sequence

import numpy as np

__all__ = ["HEADER_LEN", "RECORD_VERSION", "Field", "RankFailure", "RankStateError", "RankStates", "failed_record",
           "pack_record", "parse_records", "queue_digest", "record_length", "stack_records"]

RECORD_VERSION = 1


class Field(IntEnum):
    """Index of each header value in a record."""

    VERSION = 0  # RECORD_VERSION of the sender
    LENGTH = 1  # the sender's record length (header + match slots)
    RANK = 2  # the sender's rank; row r of the gathered array must be rank r
    STEP = 3  # the step the record belongs to; every rank must be at the same step
    STATUS = 4  # STATUS_OK, or STATUS_FAILED: the sender raised and stops
    ACTIVE_REQUESTS = 5  # requests in the rank's active list (TensorRT-LLM: num_active_requests)
    ACTIVE_TOKENS = 6  # their prompt tokens (DefaultADPRouter's num_active_tokens)
    UNCACHED_TOKENS = 7  # their prompt tokens not reused from the cache (KVCacheAwareADPRouter's)
    FREE_BLOCKS = 8  # free KV blocks (cached blocks included)
    WAITING = 9  # active requests this step's schedule left out
    CONTEXT = 10  # context requests scheduled this step
    GENERATION = 11  # generation requests scheduled this step
    SCHEDULED_TOKENS = 12  # context chunk tokens + generation requests scheduled this step
    LAST_TOKENS = 13  # tokens the rank computed in the previous step (reused prefix excluded)
    QUEUE_LEN = 14  # queued requests whose match lengths follow (the head of the waiting queue)
    QUEUE_DIGEST = 15  # crc32 of those requests' ids: every rank must see the same queue


HEADER_LEN = len(Field)
STATUS_OK = 0
STATUS_FAILED = 1

class RankStateError(ValueError):
    """A gathered record that does not parse (another version or length, a rank out of place, ranks
    at different steps or with different queues). Raised on every rank that parses it."""


class RankFailure(RuntimeError):
    """Another rank failed: it raised (and sent a failure record instead of its state), died, or
    stopped answering within the group's timeout."""


def record_length(match_slots: int) -> int:
    """Values in a record with room for `match_slots` match lengths."""
    if match_slots < 0:
        raise ValueError(f"match_slots must be >= 0, got {match_slots}")
    return HEADER_LEN + int(match_slots)


def queue_digest(request_ids: np.ndarray) -> int:
    """The QUEUE_DIGEST of a queue head: crc32 of its int64 request ids."""
    return zlib.crc32(np.ascontiguousarray(request_ids, dtype=np.int64).tobytes())


def pack_record(out: np.ndarray, *, rank: int, step: int, active_requests: int, active_tokens: int,
                uncached_tokens: int, free_blocks: int, waiting: int, context: int, generation: int,
                scheduled_tokens: int, last_tokens: int, queue_ids: np.ndarray,
                matches: np.ndarray | None = None) -> np.ndarray:
    """Writes one rank's record into `out` (int64, record_length(match_slots) values; reused every
    step so a transport can keep a view of it) and returns `out`. `matches` holds the match length
    of each of `queue_ids` (None: zeros, for routers that need none); the queue head must fit the
    match slots."""
    n = int(queue_ids.size)
    slots = out[HEADER_LEN:]
    if slots.size and n > slots.size:
        raise ValueError(f"a queue head of {n} requests does not fit the record's {slots.size} match slots")
    out[:HEADER_LEN] = (RECORD_VERSION, out.size, rank, step, STATUS_OK, active_requests, active_tokens,
                        uncached_tokens, free_blocks, waiting, context, generation, scheduled_tokens, last_tokens, n,
                        queue_digest(queue_ids))
    if matches is None:
        slots[:] = 0
    else:
        if matches.shape != (n,) or (n and not slots.size):
            raise ValueError(f"matches: expected {n} match lengths in a record with match slots, got shape "
                             f"{matches.shape} and {slots.size} slots")
        slots[:n] = matches
        slots[n:] = 0
    return out


def failed_record(length: int, rank: int, step: int) -> np.ndarray:
    """The record a rank that raised sends instead of its state, so that the others stop at once."""
    out = np.zeros(length, dtype=np.int64)
    out[:Field.STATUS + 1] = (RECORD_VERSION, length, rank, step, STATUS_FAILED)
    return out


def stack_records(records: Sequence[np.ndarray]) -> np.ndarray:
    """The gathered (world_size, length) array of per-rank records (the in-process all_gather);
    records of another shape are refused like a record that does not parse."""
    if not records:
        raise RankStateError("no rank state records to gather")
    length = records[0].shape
    for r, rec in enumerate(records):
        if rec.ndim != 1 or rec.dtype != np.int64:
            raise RankStateError(f"rank {r}'s state record is not a 1-D int64 array ({rec.dtype}, {rec.ndim}-D)")
        if rec.shape != length:
            raise RankStateError(f"rank {r}'s state record has {rec.size} values, rank 0's {length[0]}: "
                                 f"the ranks disagree on the record layout (match slots or version)")
    return np.stack(records)


@dataclass(frozen=True)
class RankStates:
    """Every rank's parsed state at one step: per-rank int64 columns (contiguous, read-only) and the
    (world_size, queue_len) match lengths (a view of the gathered array)."""

    step: int
    queue_len: int
    records: np.ndarray  # the gathered (world_size, length) array
    fields: np.ndarray  # (HEADER_LEN, world_size): the headers, one contiguous row per Field
    matches: np.ndarray  # (world_size, queue_len) match lengths (a view of `records`; zeros without match slots)

    @property
    def world_size(self) -> int:
        return int(self.records.shape[0])

    def column(self, field: Field) -> np.ndarray:
        return self.fields[field]

    # (int indices bound once: indexing with an IntEnum costs a conversion on every access)
    active_requests = property(lambda self, i=int(Field.ACTIVE_REQUESTS): self.fields[i])
    active_tokens = property(lambda self, i=int(Field.ACTIVE_TOKENS): self.fields[i])
    uncached_tokens = property(lambda self, i=int(Field.UNCACHED_TOKENS): self.fields[i])
    context = property(lambda self, i=int(Field.CONTEXT): self.fields[i])
    generation = property(lambda self, i=int(Field.GENERATION): self.fields[i])
    last_tokens = property(lambda self, i=int(Field.LAST_TOKENS): self.fields[i])


def parse_records(gathered: np.ndarray, *, length: int, step: int) -> RankStates:
    """Checks the gathered records of one step and returns them as RankStates (no copy).

    Raises RankFailure if a rank sent a failure record, RankStateError if a record does not parse:
    another version, another length, row r not from rank r, another step, a queue head that is not
    every rank's, or a negative count. A handful of whole-array comparisons on the good path; the
    message is worked out only when one fails."""
    if gathered.ndim != 2 or gathered.dtype != np.int64 or gathered.shape[1] != length or gathered.shape[0] == 0:
        raise RankStateError(f"gathered state records: expected an int64 (world_size, {length}) array, got "
                             f"{gathered.dtype} {gathered.shape}")
    head = gathered[:, :HEADER_LEN]
    want = _expected_head(gathered.shape[0], length)
    want[:, Field.STEP] = step
    want[:, Field.ACTIVE_REQUESTS:Field.QUEUE_LEN] = head[:, Field.ACTIVE_REQUESTS:Field.QUEUE_LEN]  # free values
    want[:, Field.QUEUE_LEN:] = head[0, Field.QUEUE_LEN:]  # every rank's queue is rank 0's
    queue_len = int(head[0, Field.QUEUE_LEN])
    # every valid value is >= 0: one minimum checks all the counts and match lengths
    if (head != want).any() or gathered.min() < 0 or (length > HEADER_LEN and queue_len > length - HEADER_LEN):
        _refuse(gathered, length, step)
    fields = head.T.copy()
    fields.flags.writeable = False
    if length == HEADER_LEN:
        matches = np.zeros((gathered.shape[0], queue_len), dtype=np.int64)
    else:
        matches = gathered[:, HEADER_LEN:HEADER_LEN + queue_len]
    return RankStates(step, queue_len, gathered, fields, matches)


_HEADS: dict = {}


def _expected_head(world: int, length: int) -> np.ndarray:
    """A (world, HEADER_LEN) scratch header with the values every record must hold (version,
    length, rank, status), cached per shape; the caller fills in the rest."""
    want = _HEADS.get((world, length))
    if want is None:
        want = np.zeros((world, HEADER_LEN), dtype=np.int64)
        want[:, Field.VERSION], want[:, Field.LENGTH], want[:, Field.RANK] = RECORD_VERSION, length, np.arange(world)
        want[:, Field.STATUS] = STATUS_OK
        _HEADS[(world, length)] = want
    return want


def _refuse(gathered: np.ndarray, length: int, step: int) -> None:
    """Raises the error of the first thing wrong in `gathered`, in this order: version, length,
    failure, rank, step, queue, counts (a record of another version may have another layout)."""
    row0 = gathered[0]
    queue = lambda r, v: (f"rank {r} sees another waiting queue than rank 0 (length {int(gathered[r, Field.QUEUE_LEN])} "  # noqa: E731
                          f"vs {int(row0[Field.QUEUE_LEN])}): every rank must hold the same queue")
    checks = (
        (Field.VERSION, RECORD_VERSION, RankStateError, lambda r, v: f"rank {r}'s state record has version {v}, this "
         f"rank reads version {RECORD_VERSION}: mixed tllm_sched versions"),
        (Field.LENGTH, length, RankStateError, lambda r, v: f"rank {r}'s state record says it has {v} values, "
         f"expected {length}: the ranks disagree on the record layout (match slots)"),
        (Field.STATUS, STATUS_OK, RankFailure, lambda r, v: f"attention-DP rank {int(gathered[r, Field.RANK])} failed "
         f"at step {int(gathered[r, Field.STEP])} (its own error is in its log); stopping"),
        (Field.RANK, np.arange(gathered.shape[0]), RankStateError, lambda r, v: f"state record {r} comes from rank "
         f"{v}: records must be gathered in rank order"),
        (Field.STEP, step, RankStateError, lambda r, v: f"rank {r} is at step {v}, this rank at step {step}: the "
         f"ranks are out of step"),
        (Field.QUEUE_LEN, row0[Field.QUEUE_LEN], RankStateError, queue),
        (Field.QUEUE_DIGEST, row0[Field.QUEUE_DIGEST], RankStateError, queue),
    )
    for field, want, error, message in checks:
        bad = np.flatnonzero(gathered[:, field] != want)
        if bad.size:
            r = int(bad[0])
            raise error(message(r, int(gathered[r, field])))
    queue_len = int(row0[Field.QUEUE_LEN])
    if queue_len < 0 or (length > HEADER_LEN and queue_len > length - HEADER_LEN):
        raise RankStateError(f"queue length {queue_len} does not fit the record's {length - HEADER_LEN} match slots")
    negative = (gathered < 0).any(axis=1)
    raise RankStateError(f"rank {int(np.flatnonzero(negative)[0])}'s state record holds a negative count")
