"""tllm_sched/attention_dp/adp_router.py: which rank each new request goes to (attention DP).

C++ twin: ext/adp_router.{h,cpp}. TensorRT-LLM's twin: scheduler/adp_router.py. Every rank runs
the same router on the same gathered `RankStates` and the same queue head (`NewRequests`), so all
ranks reach the same `Routing` without a coordinator. Nothing here depends on set or dict order
or on unseeded randomness; ties are broken by rank index or by a fixed hash of (request id, rank).

Routers (`make_router(name)`):
  - "round-robin": TensorRT-LLM's old baseline: largest requests first, dealt to the ranks in turn
    (skipping full ranks), continuing where the previous step stopped.
  - "load": DefaultADPRouter (TensorRT-LLM's default): requests with a target rank go there while
    it has room; the rest, largest first, each go to the rank with the fewest active tokens (then
    requests), up to an expected per-rank count.
  - "kv-aware": KVCacheAwareADPRouter: each request goes to the rank that minimises its uncached
    tokens (prompt minus the prefix that rank's reuse tree holds) plus a load penalty.

Target admission is array math here; the ordering, the per-rank cap and the greedy loop, where each
choice depends on the one before, run in one C++ call per step (backend "cpp", the default; numpy
would cost more than the whole call, design.md) or in plain Python as TensorRT-LLM writes them
(backend "python", the deliberately naive reference; the tests hold both to the same answers and
the same refusals).
"""

from __future__ import annotations

import heapq
import math
import sys
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from tllm_sched import _core
from tllm_sched.attention_dp.rank_state import Field, RankStates

__all__ = ["ADPRouter", "BACKENDS", "KVCacheAwareRouter", "LoadBalancedRouter", "NewRequests", "ROUTERS",
           "RoundRobinRouter", "Routing", "make_router", "tie_priorities"]

BACKENDS = ("cpp", "python")
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _int_array(a, name: str, dtype) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got {arr.ndim}-D")
    if arr.size and arr.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass(frozen=True)
class NewRequests:
    """The requests to route this step (the head of the waiting queue every rank holds), as arrays.

    `target_rank` is TensorRT-LLM's attention_dp_rank (-1: none), `strict` its attention_dp_relax
    == False (such requests are considered first), `fingerprint` a prefix fingerprint that the
    KV-aware router groups by (TensorRT-LLM: the first 64 prompt tokens)."""

    request_id: np.ndarray  # int64
    num_tokens: np.ndarray  # int64 prompt lengths, all > 0
    target_rank: Optional[np.ndarray] = None  # int32, -1 for none
    strict: Optional[np.ndarray] = None  # bool
    fingerprint: Optional[np.ndarray] = None  # int64

    def __post_init__(self):
        n = self.request_id.size
        for name, dtype in (("request_id", np.int64), ("num_tokens", np.int64), ("target_rank", np.int32),
                            ("strict", np.bool_), ("fingerprint", np.int64)):
            a = getattr(self, name)
            if a is None and name not in ("request_id", "num_tokens"):
                continue
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != (n,):
                raise TypeError(f"NewRequests.{name}: expected a 1-D {np.dtype(dtype)} array of {n} entries "
                                f"(NewRequests.make converts)")
        if n and int(self.num_tokens.min()) <= 0:
            raise ValueError("num_tokens: every request needs at least one prompt token")

    @classmethod
    def make(cls, request_id, num_tokens, target_rank=None, strict=None, fingerprint=None) -> "NewRequests":
        """From any integer sequences of one length (converted; a float or a wrong length is refused)."""
        ids = _int_array(request_id, "request_id", np.int64)
        arrays = [_int_array(a, name, dtype) if a is not None else None for name, a, dtype in (
            ("num_tokens", num_tokens, np.int64), ("target_rank", target_rank, np.int32),
            ("strict", strict, np.bool_), ("fingerprint", fingerprint, np.int64))]
        for name, a in zip(("num_tokens", "target_rank", "strict", "fingerprint"), arrays):
            if a is not None and a.size != ids.size:
                raise ValueError(f"{name}: expected {ids.size} entries, got {a.size}")
        return cls(ids, *arrays)

    def __len__(self) -> int:
        return int(self.request_id.size)

    def head(self, n: int) -> "NewRequests":
        """The first n requests (views)."""
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return NewRequests(self.request_id[:n], self.num_tokens[:n], cut(self.target_rank), cut(self.strict),
                           cut(self.fingerprint))


class Routing(NamedTuple):
    """One step's routing: the rank of each new request (-1: it stays queued), and the per-rank
    request count the router aimed at (TensorRT-LLM's expected_num_active_requests)."""

    ranks: np.ndarray  # int32, one per new request
    expected_num_active_requests: int


def tie_priorities(request_ids: np.ndarray, world_size: int) -> np.ndarray:
    """(n, world_size) int64: a fixed pseudo-random order of the ranks for each request id, used to
    break exact score ties (TensorRT-LLM shuffles the ranks with random.Random(request_id))."""
    x = request_ids.astype(np.uint64)[:, None] * _MIX[0] + np.arange(world_size, dtype=np.uint64)[None, :] * _MIX[1]
    x ^= x >> np.uint64(30)
    x *= _MIX[1]
    x ^= x >> np.uint64(27)
    x *= _MIX[2]
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(1)).astype(np.int64)


class ADPRouter:
    """Routes the new requests of a step from every rank's state. Subclasses implement `_route`."""

    name = ""
    needs_prefix_matches = False  # the records must carry match lengths of the queue head

    def route(self, states: RankStates, new: NewRequests, max_num_active_requests: int) -> Routing:
        """The rank of each request of `new` (which must be the queue head the states' match lengths
        describe). Raises ValueError for a target rank outside the world or a wrong queue length."""
        if max_num_active_requests <= 0:
            raise ValueError(f"max_num_active_requests must be positive, got {max_num_active_requests}")
        if self.needs_prefix_matches and new.request_id.size != states.queue_len:
            raise ValueError(f"{len(new)} new requests but the gathered records describe a queue head of "
                             f"{states.queue_len}")
        target = new.target_rank
        if target is not None and target.size:
            world = states.world_size
            bad = (target < -1) | (target >= world)
            if bad.any():
                raise ValueError(f"target rank {int(target[bad.argmax()])} is not a rank of {world}")
        return self._route(states, new, max_num_active_requests)

    def _route(self, states: RankStates, new: NewRequests, max_active: int) -> Routing:
        raise NotImplementedError

    @staticmethod
    def _targets(new: NewRequests, active: np.ndarray, max_active: int):
        """TensorRT-LLM's first pass, as array math: requests in order (strict ones first, stable)
        that name a target rank go there while it has fewer than `max_active` requests. Returns
        (ranks: int32 with -1 where not placed, or None when nothing was; active counts after;
        the other requests' indices in order as int32, or None for all of them in queue order)."""
        if new.target_rank is None and new.strict is None:  # the common case, first
            return None, active, None
        order = None if new.strict is None or not new.strict.any() else np.argsort(~new.strict, kind="stable").astype(np.int32)
        if new.target_rank is None or not (new.target_rank >= 0).any():
            return None, active, order
        order = np.arange(len(new), dtype=np.int32) if order is None else order
        want = new.target_rank[order]
        idx = order[want >= 0]
        tgt = want[want >= 0].astype(np.int64)
        by_rank = np.argsort(tgt, kind="stable")
        sorted_tgt = tgt[by_rank]
        nth = np.empty_like(by_rank)  # how many earlier requests name the same target
        nth[by_rank] = np.arange(tgt.size) - np.searchsorted(sorted_tgt, sorted_tgt, side="left")
        ok = nth < np.maximum(max_active - active, 0)[tgt]
        ranks = np.full(len(new), -1, dtype=np.int32)
        ranks[idx[ok]] = tgt[ok]
        active = active.copy()
        np.add.at(active, tgt[ok], 1)
        return ranks, active, order[ranks[order] < 0]


class RoundRobinRouter(ADPRouter):
    """Largest requests first, dealt to the ranks in turn from where the last step stopped, skipping
    ranks with max_num_active_requests (TensorRT-LLM's ADP-balance blog baseline). Targets first."""

    name = "round-robin"

    def __init__(self, backend: str = "cpp"):
        self.backend = _backend(backend)
        self._loop = _core.adp_round_robin if backend == "cpp" else _round_robin_python
        self._next = 0  # the rank the next request goes to; evolves identically on every rank

    def _route(self, states, new, max_active):
        ranks, active, rest = self._targets(new, states.active_requests, max_active)
        ranks, self._next = self._loop(new.num_tokens, rest, active, max_active, self._next, ranks)
        return Routing(ranks, max_active)


class LoadBalancedRouter(ADPRouter):
    """TensorRT-LLM's DefaultADPRouter: targets first; then every other request, largest first,
    to the rank with the smallest (active prompt tokens, active requests, rank) among those below
    the expected count min(max(ceil((active + new) / ranks), busiest rank), max_num_active_requests).
    Requests left when every rank reached it stay queued (TensorRT-LLM fetches no more than fit)."""

    name = "load"

    def __init__(self, backend: str = "cpp"):
        self.backend = _backend(backend)
        self._loop = _core.adp_balance if backend == "cpp" else _balance_python

    def _route(self, states, new, max_active):
        ranks, active, rest = self._targets(new, states.active_requests, max_active)
        return Routing(*self._loop(new.num_tokens, rest, states.active_tokens, active, max_active, ranks))


class KVCacheAwareRouter(ADPRouter):
    """TensorRT-LLM's KVCacheAwareADPRouter. Load is the active requests' uncached prompt tokens.
    Targets first (their uncached tokens added to the target's load). The others, grouped by prefix
    fingerprint and longest first within a group, each go to the eligible rank with the lowest
        score = (tokens - match) + load_balance_weight * load / max(eligible load, tokens) * tokens,
    where match (the rank's cached prefix of the request) counts only when the best match on any
    eligible rank exceeds match_rate_threshold of the prompt; ties go to the less loaded rank, then
    to a fixed hash order of the ranks. A rank stops being eligible at the cap
    min(max(ceil(fair_share_multiplier * ceil((active + new) / ranks)), busiest), max_active)."""

    name = "kv-aware"
    needs_prefix_matches = True

    def __init__(self, backend: str = "cpp", *, load_balance_weight: float = 1.0, match_rate_threshold: float = 0.1,
                 fair_share_multiplier: float = 2.0):
        for name, v in (("load_balance_weight", load_balance_weight), ("match_rate_threshold", match_rate_threshold),
                        ("fair_share_multiplier", fair_share_multiplier)):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.backend = _backend(backend)
        self._loop = _core.adp_kv_route if backend == "cpp" else _kv_route_python
        self.load_balance_weight = float(load_balance_weight)
        self.match_rate_threshold = float(match_rate_threshold)
        self.fair_share_multiplier = float(fair_share_multiplier)
        # The result buffer, reused while no earlier Routing (or a view of one) still holds it: a
        # result a caller keeps is never overwritten. _free_refs: its reference count when only we
        # hold it, counted the way `route` counts (attribute + local + argument).
        self._ranks = buf = np.empty(0, dtype=np.int32)
        self._free_refs = sys.getrefcount(buf)

    def route(self, states, new, max_num_active_requests):
        # The usual step (no targets, no strict requests, valid arguments) in one frame: the checks
        # and the target pass are the base class's (ADPRouter.route -> _route) otherwise.
        n = new.request_id.size
        if (new.target_rank is not None or new.strict is not None or max_num_active_requests <= 0
                or n != states.queue_len):
            return ADPRouter.route(self, states, new, max_num_active_requests)
        buf = self._ranks
        if buf.size != n or sys.getrefcount(buf) != self._free_refs:
            self._ranks = buf = np.empty(n, dtype=np.int32)
        fp = new.fingerprint
        # (tuple.__new__: Routing(...) costs a Python-level __new__)
        return tuple.__new__(Routing, (buf, self._loop(
            new.num_tokens, new.request_id, fp if fp is not None else np.zeros(n, dtype=np.int64), None,
            states.matches, states.fields, _UNCACHED, _ACTIVE, max_num_active_requests, self.fair_share_multiplier,
            self.load_balance_weight, self.match_rate_threshold, buf, True)))

    def _route(self, states, new, max_active):
        # The per-rank inputs go as one array, the gathered header, with the rows to read (fewer
        # arrays across the binding); match: (ranks, requests), a view of the records.
        fields, match = states.fields, states.matches
        ranks, active, rest = self._targets(new, fields[_ACTIVE], max_active)
        reset = ranks is None
        if not reset:
            hit = np.flatnonzero(ranks >= 0)
            fields = fields.copy()
            fields[_ACTIVE] = active
            np.add.at(fields[_UNCACHED], ranks[hit], np.maximum(new.num_tokens[hit] - match[ranks[hit], hit], 0))
        else:
            ranks = np.empty(new.request_id.size, dtype=np.int32)
        fingerprint = new.fingerprint if new.fingerprint is not None else np.zeros(new.request_id.size, dtype=np.int64)
        expected = self._loop(new.num_tokens, new.request_id, fingerprint, rest, match, fields, _UNCACHED, _ACTIVE,
                              max_active, self.fair_share_multiplier, self.load_balance_weight,
                              self.match_rate_threshold, ranks, reset)
        return Routing(ranks, expected)


_UNCACHED, _ACTIVE = int(Field.UNCACHED_TOKENS), int(Field.ACTIVE_REQUESTS)


def _backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


ROUTERS = {r.name: r for r in (RoundRobinRouter, LoadBalancedRouter, KVCacheAwareRouter)}


def make_router(name: str, backend: str = "cpp", **options) -> ADPRouter:
    """A router by name ("round-robin", "load", "kv-aware"); options go to the KV-aware router."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r} (choose from {', '.join(ROUTERS)})")
    if name == "kv-aware":
        return KVCacheAwareRouter(backend, **options)
    if options:
        raise ValueError(f"router {name!r} takes no options, got {', '.join(sorted(options))}")
    return ROUTERS[name](backend)


# ------------------------------------------------------------------ the greedy loops in plain Python


def _candidates(candidates, n: int) -> list:
    return list(range(n)) if candidates is None else candidates.tolist()


def _initial(ranks, n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int32) if ranks is None else ranks.copy()


def _check_counts(rank_requests) -> list:
    counts = rank_requests.tolist()
    if any(q < 0 or q >= 2**32 for q in counts):
        raise ValueError("rank_requests: every count must be >= 0 and below 2**32")
    return counts


def _check_token_counts(tokens, rank_tokens, log2_limit: int) -> None:
    if tokens.size and int(tokens.min()) <= 0:
        raise ValueError("tokens: every request needs at least one token")
    if int(rank_tokens.min()) < 0:
        raise ValueError("rank_tokens: must be >= 0")
    if sum(tokens.tolist()) + sum(rank_tokens.tolist()) >= 2**log2_limit:  # python ints: no overflow
        raise ValueError(f"token counts too large: they must sum to less than 2**{log2_limit}")


def _expected(counts: list, k: int, multiplier: float, max_active: int) -> int:
    """TensorRT-LLM's expected_num_active_requests: k requests to place over the ranks' counts."""
    fair = -(-(sum(counts) + k) // len(counts))
    return min(max(math.ceil(multiplier * fair), max(counts)), max_active)


def _round_robin_python(tokens, candidates, rank_requests, max_active, start, ranks) -> tuple:
    """adp_round_robin in Python: deal largest first, skipping full ranks."""
    _check_counts(rank_requests)
    room = [max(max_active - q, 0) for q in rank_requests.tolist()]
    out, tok, turn, world = _initial(ranks, tokens.size), tokens.tolist(), start, len(room)
    for i in sorted(_candidates(candidates, tokens.size), key=lambda i: tok[i], reverse=True):
        if not any(room):
            break
        while room[turn] == 0:
            turn = (turn + 1) % world
        out[i] = turn
        room[turn] -= 1
        turn = (turn + 1) % world
    return out, turn


def _balance_python(tokens, candidates, rank_tokens, rank_requests, max_active, ranks) -> tuple:
    """adp_balance in Python: TensorRT-LLM's heap of (tokens, requests, rank)."""
    _check_token_counts(tokens, rank_tokens, 62)
    cand = _candidates(candidates, tokens.size)
    expected = _expected(_check_counts(rank_requests), len(cand), 1.0, max_active)
    heap = [(t, q, r) for r, (t, q) in enumerate(zip(rank_tokens.tolist(), rank_requests.tolist())) if q < expected]
    heapq.heapify(heap)
    out, tok = _initial(ranks, tokens.size), tokens.tolist()
    for i in sorted(cand, key=lambda i: tok[i], reverse=True):
        if not heap:
            break
        t, q, r = heapq.heappop(heap)
        out[i] = r
        if q + 1 < expected:
            heapq.heappush(heap, (t + tok[i], q + 1, r))
    return out, expected


def _kv_route_python(tokens, request_ids, fingerprints, candidates, match, rank_fields, load_row, requests_row,
                     max_active, fair_share_multiplier, weight, threshold, ranks, reset) -> int:
    """adp_kv_route in Python: TensorRT-LLM's scoring loop, ties broken by `tie_priorities`; writes into
    `ranks` in place (all -1 first with `reset`), returns the expected per-rank count."""
    rank_tokens, rank_requests = rank_fields[load_row], rank_fields[requests_row]
    _check_token_counts(tokens, rank_tokens, 53)
    cand = _candidates(candidates, tokens.size)
    expected = _expected(_check_counts(rank_requests), len(cand), fair_share_multiplier, max_active)
    world = rank_tokens.size
    load = [float(t) for t in rank_tokens.tolist()]
    count = rank_requests.tolist()
    eligible = [r for r in range(world) if count[r] < expected]
    match, tie = match.T.tolist(), tie_priorities(request_ids, world).tolist()
    tok, fp = tokens.tolist(), fingerprints.tolist()
    if ranks.size != tokens.size:
        raise ValueError("ranks: expected one entry per request")
    out = ranks
    if reset:
        out[:] = -1
    for i in sorted(cand, key=lambda i: (fp[i], -tok[i])):
        if not eligible:
            break
        t, m, p = tok[i], match[i], tie[i]
        denom = max(sum(load[r] for r in eligible), float(t))
        affinity = max(m[r] for r in eligible) / max(t, 1) > threshold
        best = min(eligible, key=lambda r: ((t - (m[r] if affinity else 0)) + weight * (load[r] / denom * t),
                                            load[r], p[r]))
        out[i] = best
        count[best] += 1
        load[best] += max(t - m[best], 0)
        if count[best] >= expected:
            eligible.remove(best)
    return expected
