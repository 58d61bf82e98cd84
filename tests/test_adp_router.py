"""tests/test_adp_router.py: the attention-DP routers on hand-computed states, both backends, and
hypothesis: random states and queues give the same routing on every rank, in any order the ranks
run, with either backend."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tllm_sched.attention_dp.adp_router import NewRequests, make_router, tie_priorities
from tllm_sched.attention_dp.rank_state import pack_record, parse_records, record_length, stack_records

BACKENDS = ("cpp", "python")


def states(active, tokens, uncached=None, matches=None, queue_len=0, step=0):
    """Gathered RankStates: per rank active requests, active (prompt) tokens, uncached tokens and,
    for the KV-aware router, a row of match lengths of the queue head."""
    world = len(active)
    uncached = tokens if uncached is None else uncached
    slots = queue_len if matches is not None else 0
    ids = np.arange(queue_len, dtype=np.int64)
    recs = [pack_record(np.zeros(record_length(slots), dtype=np.int64), rank=r, step=step,
                        active_requests=active[r], active_tokens=tokens[r], uncached_tokens=uncached[r],
                        free_blocks=0, waiting=0, context=0, generation=0, scheduled_tokens=0, last_tokens=0,
                        queue_ids=ids, matches=None if matches is None else np.array(matches[r], dtype=np.int64))
            for r in range(world)]
    return parse_records(stack_records(recs), length=record_length(slots), step=step)


def new(tokens, target=None, strict=None, fingerprint=None, ids=None):
    ids = np.arange(len(tokens)) if ids is None else ids
    return NewRequests.make(ids, tokens, target, strict, fingerprint)


def route(name, backend, st_, nr, max_active, **opts):
    r = make_router(name, backend, **opts).route(st_, nr, max_active)
    return r.ranks.tolist(), r.expected_num_active_requests


# ---------------------------------------------------------------------------------------- load


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_heap_largest_first_to_the_least_loaded_rank(backend):
    # expected = min(max(ceil((2 + 3) / 2), 1), 10) = 3; heap (100,1,0) (0,1,1)
    # 50 -> rank 1 (50,2,1); 30 -> rank 1 (80,3,1) leaves the heap; 20 -> rank 0
    assert route("load", backend, states([1, 1], [100, 0]), new([50, 30, 20]), 10) == ([1, 1, 0], 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_ties_go_to_fewer_requests_then_lower_rank(backend):
    # all (0, 0): 0 -> rank 0, 1 -> rank 1, 2 -> rank 2, then (10,1,r) for all: 3 -> rank 0
    assert route("load", backend, states([0, 0, 0], [0, 0, 0]), new([10, 10, 10, 10]), 10) == ([0, 1, 2, 0], 2)
    # equal tokens, rank 1 has fewer requests
    assert route("load", backend, states([2, 1], [5, 5]), new([7]), 10)[0] == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_target_at_capacity_is_balanced_and_the_rest_waits(backend):
    # A (strict, target 0) finds rank 0 full; B (target 1) fits; expected = min(max(ceil(5/2), 2), 2) = 2,
    # only rank 1 (1 active) is below it: A (largest) takes it, C finds no rank and stays queued
    nr = new([100, 10, 50], target=[0, 1, -1], strict=[True, False, False])
    assert route("load", backend, states([2, 0], [0, 0]), nr, 2) == ([1, 1, -1], 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_strict_targets_go_first(backend):
    # one slot left on rank 0: the strict request (listed second) takes it, the other is balanced
    nr = new([10, 10], target=[0, 0], strict=[False, True])
    assert route("load", backend, states([1, 0], [0, 0]), nr, 2)[0] == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_empty_queue_and_all_ranks_full(backend):
    assert route("load", backend, states([3, 1], [0, 0]), new([]), 8) == ([], 3)
    assert route("load", backend, states([4, 4], [0, 0]), new([5, 6]), 4) == ([-1, -1], 4)


# ------------------------------------------------------------------------------------ kv-aware


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_affinity_beats_a_light_load(backend):
    # uncached loads [300, 0]; 800 of 1,000 tokens cached on rank 0 (80% > 10%): denom = max(300, 1000)
    # score0 = 200 + 300/1000*1000 = 500, score1 = 1000 + 0 = 1000 -> rank 0;
    # expected = min(max(ceil(2 * ceil(3/2)), 1), 8) = 4
    s = states([1, 1], [0, 0], uncached=[300, 0], matches=[[800], [0]], queue_len=1)
    assert route("kv-aware", backend, s, new([1000]), 8) == ([0], 4)
    # against a heavy load it loses: score0 = 200 + 1000, score1 = 1000
    s = states([1, 1], [0, 0], uncached=[1000, 0], matches=[[800], [0]], queue_len=1)
    assert route("kv-aware", backend, s, new([1000]), 8)[0] == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_small_matches_are_ignored_but_still_lower_the_load(backend):
    # 50 of 1000 cached (5% <= 10%): pure load: scores 1000 + 300 vs 1000 -> rank 1
    s = states([1, 1], [0, 0], uncached=[300, 0], matches=[[50, 50], [0, 0]], queue_len=2)
    # second request: loads [300, 1000]: total 1300, scores 1000 + 300/1300*1000 vs 1000 + 1000/1300*1000 -> rank 0,
    # whose load grows by 1000 - 50 (the gated match still counts for the load)
    router = make_router("kv-aware", backend)
    assert router.route(s, new([1000, 1000]), 8).ranks.tolist() == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_exact_ties_go_to_the_lower_load_then_the_hash_order(backend):
    s = states([0, 0, 0], [0, 0, 0], uncached=[0, 0, 0], matches=[[0, 0]] * 3, queue_len=2)
    nr = new([100, 50], ids=np.array([41, 42]))
    first = int(np.argmin(tie_priorities(np.array([41]), 3)[0]))  # all scores 100, all loads 0
    ranks, _ = route("kv-aware", backend, s, nr, 8)
    # the second (50 tokens): the rank holding 100 scores 50 + 100/100*50 = 100, the others 50: a tie
    # between the two empty ranks, broken by the hash order of request 42
    others = [r for r in range(3) if r != first]
    second = min(others, key=lambda r: tie_priorities(np.array([42]), 3)[0, r])
    assert ranks == [first, second]


def test_tie_priorities_are_pinned():
    # the hash both backends use (ext/adp_router.cpp adp_tie_priority): changing it changes routing.
    # Spelled out with Python integers mod 2**64:
    m = (1 << 64) - 1

    def h(i, r):
        x = (i * 0x9E3779B97F4A7C15 + r * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return (x ^ (x >> 31)) >> 1

    assert tie_priorities(np.array([0, 7, 2**40 + 3]), 3).tolist() == [[h(i, r) for r in range(3)] for i in (0, 7, 2**40 + 3)]
    assert tie_priorities(np.array([7]), 2).tolist() == [[1603648013000153456, 7611029060176487998]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cap_evicts_a_rank_and_the_multiplier_loosens_it(backend):
    s = states([0, 0], [0, 0], uncached=[0, 0], matches=[[90, 90], [0, 0]], queue_len=2)
    # multiplier 1: expected = 1; A takes rank 0 (score 10 vs 100) and fills it; B must take rank 1
    assert route("kv-aware", backend, s, new([100, 100]), 8, fair_share_multiplier=1.0) == ([0, 1], 1)
    # multiplier 2: expected = 2; B: loads [10, 0], denom 100: score0 = 10 + 10 = 20 < 100 -> rank 0
    assert route("kv-aware", backend, s, new([100, 100]), 8) == ([0, 0], 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_groups_by_fingerprint_then_longest_first(backend):
    # order (fingerprint, -tokens): 1 (fp 1), 2 (fp 2, 30), 0 (fp 2, 10); loads [0, 5, 9]:
    #  1: denom 20: 20, 25, 29 -> rank 0 (load 20)
    #  2: denom 34: 30 + 20/34*30, 30 + 5/34*30, 30 + 9/34*30 -> rank 1 (load 35)
    #  0: denom 64: 10 + 20/64*10, 10 + 35/64*10, 10 + 9/64*10 -> rank 2
    s = states([0, 0, 0], [0, 0, 0], uncached=[0, 5, 9], matches=[[0] * 3] * 3, queue_len=3)
    assert route("kv-aware", backend, s, new([10, 20, 30], fingerprint=[2, 1, 2]), 8)[0] == [2, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_target_adds_its_uncached_tokens(backend):
    # A targets rank 1 where 60 of its 100 tokens are cached: rank 1's load becomes 40;
    # B: denom max(40, 100): score0 = 100, score1 = 100 + 40 -> rank 0
    s = states([0, 0], [0, 0], uncached=[0, 0], matches=[[0, 0], [60, 0]], queue_len=2)
    assert route("kv-aware", backend, s, new([100, 100], target=[1, -1]), 8)[0] == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_no_eligible_rank_and_empty_queue(backend):
    s = states([3, 3], [0, 0], uncached=[0, 0], matches=[[1, 2], [3, 4]], queue_len=2)
    assert route("kv-aware", backend, s, new([10, 20]), 3) == ([-1, -1], 3)
    # fair share ceil(3 / 2) = 2, expected = min(max(ceil(2.0 * 2), 2), 8) = 4
    assert route("kv-aware", backend, states([1, 2], [0, 0], matches=[[], []]), new([]), 8) == ([], 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_refuses_token_counts_it_cannot_sum_exactly(backend):
    # the loop keeps the eligible total up to date instead of re-adding it: exact below 2**53 only
    s = states([0, 0], [0, 0], uncached=[2**52, 2**52 - 8], matches=[[0], [0]], queue_len=1)
    with pytest.raises(ValueError, match="must sum to less than 2\\*\\*53"):
        make_router("kv-aware", backend).route(s, new([8]), 4)
    s = states([0, 0], [0, 0], uncached=[2**52, 2**52 - 9], matches=[[0], [0]], queue_len=1)
    assert make_router("kv-aware", backend).route(s, new([8]), 4).ranks.tolist() == [1]


def test_kv_refuses_a_queue_the_records_do_not_describe():
    s = states([0, 0], [0, 0], matches=[[1], [2]], queue_len=1)
    with pytest.raises(ValueError, match="describe a queue head of 1"):
        make_router("kv-aware").route(s, new([5, 6]), 8)


# ---------------------------------------------------------------------------------- round-robin


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_robin_largest_first_continues_where_it_stopped(backend):
    router = make_router("round-robin", backend)
    # sorted: 1 (9), 2 (7), 0 (5), 3 (1) dealt to 0, 1, 2, 0
    assert router.route(states([0, 0, 0], [0, 0, 0]), new([5, 9, 7, 1]), 10).ranks.tolist() == [2, 0, 1, 0]
    # next turn starts at rank 1: 1 (4) -> 1, 0 (3) -> 2
    assert router.route(states([0, 0, 0], [0, 0, 0]), new([3, 4]), 10).ranks.tolist() == [2, 1]
    assert router.route(states([0, 0, 0], [0, 0, 0]), new([]), 10).ranks.tolist() == []
    assert router.route(states([0, 0, 0], [0, 0, 0]), new([1]), 10).ranks.tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_robin_skips_full_ranks_and_leaves_the_rest_queued(backend):
    # room [0, 2, 1]: round 0 deals ranks 1, 2; round 1 rank 1; the fourth request waits
    r = make_router("round-robin", backend).route(states([2, 0, 1], [0, 0, 0]), new([1, 1, 1, 1]), 2)
    assert r.ranks.tolist() == [1, 2, 1, -1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_robin_honours_targets_first(backend):
    r = make_router("round-robin", backend).route(states([0, 0], [0, 0]), new([1, 5, 3], target=[-1, 1, -1]), 4)
    assert r.ranks.tolist() == [1, 1, 0]  # 1 -> its target; then 2 (3) -> rank 0, 0 (1) -> rank 1


# ------------------------------------------------------------------------------------- refusals


def test_bad_inputs_are_refused():
    s = states([0, 0], [0, 0])
    with pytest.raises(ValueError, match="target rank 2 is not a rank of 2"):
        make_router("load").route(s, new([5], target=[2]), 4)
    with pytest.raises(ValueError, match="max_num_active_requests must be positive"):
        make_router("load").route(s, new([5]), 0)
    with pytest.raises(ValueError, match="at least one prompt token"):
        new([5, 0])
    with pytest.raises(ValueError, match="expected 2 entries"):
        new([5, 6], target=[1])
    with pytest.raises(TypeError, match="expected integers"):
        new([5.5])
    with pytest.raises(TypeError, match="NewRequests.num_tokens: expected a 1-D int64 array of 2 entries"):
        NewRequests(np.arange(2, dtype=np.int64), np.array([1, 2], dtype=np.int32))
    with pytest.raises(ValueError, match="at least one prompt token"):
        NewRequests(np.arange(2, dtype=np.int64), np.array([1, -2], dtype=np.int64))
    with pytest.raises(ValueError, match="unknown router 'x'"):
        make_router("x")
    with pytest.raises(ValueError, match="takes no options"):
        make_router("load", weight=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_router("load", "rust")
    with pytest.raises(ValueError, match="load_balance_weight must be a finite number"):
        make_router("kv-aware", load_balance_weight=float("nan"))


def test_the_cpp_kernels_check_their_inputs():
    """The core checks every value (ext/adp_router.cpp); the bindings only convert (dtype, None)."""
    from tllm_sched import _core

    tok, r0 = np.array([5, 6], dtype=np.int64), np.full(2, -1, dtype=np.int32)
    one = np.zeros(1, dtype=np.int64)
    c0 = np.array([0], dtype=np.int32)
    m12 = np.zeros((1, 2), dtype=np.int64)
    kv = lambda **kw: _core.adp_kv_route(*{**dict(  # noqa: E731
        tokens=tok, request_ids=tok, fingerprints=tok, candidates=c0, match=m12, rank_fields=np.zeros((2, 1), dtype=np.int64),
        load_row=0, requests_row=1, max_active=3, fair_share_multiplier=2.0, weight=1.0, threshold=0.1, ranks=r0,
        reset=False), **kw}.values())
    for call, message in [
        (lambda: _core.adp_balance(tok, np.array([1, 1], dtype=np.int32), one, one, 3, r0), "request 1 is listed twice"),
        (lambda: _core.adp_balance(tok, np.array([2], dtype=np.int32), one, one, 3, r0), "index 2 is not a request"),
        (lambda: _core.adp_balance(tok, c0, one, np.zeros(2, dtype=np.int64), 3, r0), "one entry per rank"),
        (lambda: _core.adp_balance(tok, None, one, one, 3, r0[:1]), "ranks: expected one entry per request"),
        (lambda: _core.adp_balance(tok, None, one, one, 0, None), "max_active must be positive"),
        (lambda: _core.adp_balance(tok, None, one, np.array([-1]), 3, None), "every count must be >= 0 and below"),
        (lambda: _core.adp_round_robin(tok, None, one, 3, 1, None), "start must be a rank"),
        (lambda: _core.adp_round_robin(tok, None, np.array([2**32]), 3, 0, None), "every count must be >= 0 and below"),
        (lambda: _core.adp_round_robin(np.array([5, 0], dtype=np.int64), None, one, 3, 0, None), "at least one token"),
        (lambda: kv(match=np.zeros((2, 2), dtype=np.int64)), r"expected shape \(ranks, requests\) = \(1, 2\)"),
        (lambda: kv(tokens=np.array([5, 0], dtype=np.int64)), "at least one token"),
        (lambda: kv(request_ids=one), "request_ids and fingerprints: expected one entry per request"),
        (lambda: kv(rank_fields=np.array([[-1], [0]])), "rank_tokens: must be >= 0"),
        (lambda: kv(rank_fields=np.array([[2**53], [0]])), "must sum to less than 2\\*\\*53"),
        (lambda: kv(rank_fields=np.array([[0], [-1]])), "every count must be >= 0 and below"),
        (lambda: kv(requests_row=2), "rank_fields: row 2 is not one of its 2"),
        (lambda: kv(load_row=-1), "rank_fields: row -1 is not one of its 2"),
        (lambda: kv(weight=float("nan")), "weight: must be a finite number >= 0"),
        (lambda: kv(threshold=-0.5), "threshold: must be a finite number >= 0"),
        (lambda: kv(fair_share_multiplier=float("inf")), "fair_share_multiplier: must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    for call, message in [  # conversion: the bindings' own refusals
        (lambda: _core.adp_balance(tok, np.array([0], dtype=np.int64), one, one, 3, r0), "candidates: .*dtype int32"),
        (lambda: _core.adp_balance(tok, [0], one, one, 3, None), "int32 numpy array or None"),
        (lambda: kv(match=np.zeros((1, 2), dtype=np.int32)), "match: expected a numpy array of dtype int64"),
        (lambda: kv(rank_fields=np.zeros((2, 1), dtype=np.int32)), "rank_fields: expected a numpy array of dtype int64"),
        (lambda: kv(rank_fields=np.zeros((2, 4), dtype=np.int64)[:, ::2], match=np.zeros((2, 2), dtype=np.int64)),
         "rank_fields: rows must be contiguous"),
        (lambda: kv(ranks=None), "ranks: expected a 1-D int32 numpy array"),
        (lambda: kv(ranks=np.zeros(2, dtype=np.int64)), "ranks: expected a 1-D int32 .* got dtype int64"),
        (lambda: kv(ranks=np.broadcast_to(np.int32(-1), (2,))), "ranks: the buffer is read-only"),
    ]:
        with pytest.raises(TypeError, match=message):
            call()
    ranks, expected = _core.adp_balance(tok, None, one, one, 3, None)
    assert ranks.tolist() == [0, 0] and expected == 2  # min(max(ceil((0 + 2) / 1), 0), 3)
    # a large multiplier aims above any cap: the cap
    out = np.array([7, 7], dtype=np.int32)
    assert kv(fair_share_multiplier=1e300, candidates=None, ranks=out, reset=True) == 3
    assert out.tolist() == [0, 0]  # written in place, every entry reset first
    with pytest.raises(ValueError, match="at least one token"):
        kv(tokens=np.array([5, 0], dtype=np.int64), ranks=out, reset=True)
    assert out.tolist() == [0, 0]  # a refused call writes nothing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["round-robin", "load", "kv-aware"])
def test_request_counts_too_large_are_refused_alike(backend, name):
    # counts come from the gathered records, which allow any non-negative int64; both backends
    # refuse what the C++ sums would not hold exactly, with one message
    s = states([2**32, 0], [0, 0], matches=[[0], [0]], queue_len=1)
    with pytest.raises(ValueError, match="rank_requests: every count must be >= 0 and below 2\\*\\*32"):
        make_router(name, backend).route(s, new([8]), 4)
    # the largest count allowed: round-robin deals from rank 0, which has room; the others go to the
    # less loaded rank (load: expected min(max(ceil(2**32 / 2), 2**32 - 1), cap) = 2**32 - 1 keeps rank 0 out)
    s = states([2**32 - 1, 0], [100, 0], matches=[[0], [0]], queue_len=1)
    assert make_router(name, backend).route(s, new([8]), 2**40).ranks.tolist() == [0 if name == "round-robin" else 1]


# ------------------------------------------------------------------------------------ hypothesis


@st.composite
def worlds(draw):
    """A world and a few steps of random states and queues. Hypothesis draws the sizes and a seed;
    numpy fills the arrays (drawing every value through hypothesis costs ~50 ms an example)."""
    world = draw(st.integers(1, 6))
    max_active = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = []
    for n in draw(st.lists(st.integers(0, 24), min_size=1, max_size=4)):
        active = rng.integers(0, max_active + 1, world)
        tokens = rng.choice([0, 512, 4096, 50_000], world) + rng.integers(0, 2, world) * rng.integers(0, 9000, world)
        uncached = tokens * rng.integers(0, 5, world) // 4
        req_tokens = np.where(rng.random(n) < 0.5, rng.choice([64, 512, 4096, 7000], n), rng.integers(1, 9000, n))
        matches = rng.choice([0, 0, 0, 64, 256, 512, 4096], (world, n))
        target = np.where(rng.random(n) < 0.3, rng.integers(0, world, n), -1)
        ids = rng.choice(2**40, n, replace=False)
        new_requests = NewRequests.make(ids, req_tokens, target, rng.random(n) < 0.3, rng.integers(0, 4, n))
        steps.append((active.tolist(), tokens.tolist(), uncached.tolist(), matches.tolist(), new_requests))
    return world, max_active, steps, draw(st.permutations(range(world)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.sampled_from(["round-robin", "load", "kv-aware"]))
def test_every_rank_routes_alike_in_any_order_with_either_backend(world_case, name):
    """Each rank owns a router (with its own state, e.g. the round-robin turn) and runs it on the
    same gathered states, the ranks taking turns in a random order; every rank, and the other
    backend, must reach the same routing at every step, within the caps."""
    world, max_active, steps, order = world_case
    backends = BACKENDS
    routers = {(r, b): make_router(name, b) for r in range(world) for b in backends}
    for active, tokens, uncached, matches, nr in steps:
        s = states(active, tokens, uncached, matches if name == "kv-aware" else None, queue_len=len(nr))
        results = {}
        for r in order:
            for b in backends:
                results[(r, b)] = routers[(r, b)].route(s, nr, max_active)
        first = results[(order[0], backends[0])]
        for key, res in results.items():
            assert res.ranks.tolist() == first.ranks.tolist(), key
            assert res.expected_num_active_requests == first.expected_num_active_requests
        ranks = first.ranks
        assert ((ranks >= -1) & (ranks < world)).all()
        after = np.array(active) + np.bincount(ranks[ranks >= 0], minlength=world)
        assert (after <= np.maximum(max_active, active)).all()
        placed_target = (nr.target_rank >= 0) & (ranks == nr.target_rank)
        # a request whose target had room when its turn came is never sent elsewhere
        for i in np.flatnonzero((nr.target_rank >= 0) & ~placed_target):
            t = nr.target_rank[i]
            strict_first = np.argsort(~nr.strict, kind="stable").tolist()
            before = strict_first[:strict_first.index(i)]
            took = sum(1 for j in before if nr.target_rank[j] == t and ranks[j] == t)
            assert active[t] + took >= max_active


@pytest.mark.parametrize("backend", BACKENDS)
def test_orderings_of_tokens_too_wide_to_pack(backend):
    # the C++ sorts packed keys (tokens above the position) while they fit in 64 bits, and a
    # struct of keys beyond: the same order either way (2**62 needs 63 bits, 3 positions 2 more)
    s = states([0, 0], [0, 0], matches=[[0] * 3, [0] * 3], queue_len=3)
    tok = [5, 2**62, 7]
    # round-robin deals the largest first from rank 0: 2**62 -> 0, 7 -> 1, 5 -> 0
    assert route("round-robin", backend, s, new(tok), 8) == ([0, 0, 1], 8)
    # load (sums below 2**62; 2**61 needs 62 bits, 4 positions 3 more): 2**61 -> rank 0, 7 and 6 to
    # the emptier rank 1, which then has the expected ceil(4 / 2) = 2, so 5 -> rank 0
    s4 = states([0, 0], [0, 0], matches=[[0] * 4, [0] * 4], queue_len=4)
    assert route("load", backend, s4, new([5, 2**61, 7, 6]), 8) == ([0, 0, 1, 1], 2)
    with pytest.raises(ValueError, match="they must sum to less than 2\\*\\*62"):
        make_router("load", backend).route(s, new([2**61, 2**61, 1]), 8)
    # KV (sums below 2**53): 2,048 requests need 12 position bits, a 2**52 prompt 53 token bits
    n = 2048
    s = states([0, 0], [0, 0], matches=[[0] * n, [0] * n], queue_len=n)
    big = new([2**52] + [1] * (n - 1), fingerprint=[0] * n)
    ranks = make_router("kv-aware", backend).route(s, big, 4096).ranks
    # the big one first (to the tie winner of the two empty ranks); every 1-token request then goes
    # to the other rank, lighter by far (2,047 of the cap of min(2 * 1,024, 4,096) = 2,048)
    first = int(ranks[0])
    assert (ranks[1:] == 1 - first).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_robin_with_the_largest_cap(backend):
    # the ranks' room (cap - active) would overflow an int64 sum; the deal is as with any cap:
    # largest first from rank 0, 9 -> 0, 7 -> 1, 5 -> 2, 3 -> 0
    s = states([0, 1, 2], [0, 0, 0])
    assert route("round-robin", backend, s, new([3, 9, 5, 7]), 2**63 - 1) == ([0, 0, 2, 1], 2**63 - 1)


@pytest.mark.parametrize("name", ["round-robin", "load", "kv-aware"])
@pytest.mark.parametrize("groups, max_tokens", [
    (1, 9000),  # radix sort, one group
    (16, 2**28 - 1),  # radix sort: 4 group bits above 28 token bits fill the 32-bit key
    (16, 2**28),  # 29 token bits: the 128-bit keys
    (17, 9000),  # more groups than the radix sort's table: the 128-bit keys
    (200, 9000),
])
def test_every_ordering_path_routes_as_the_python_reference(name, groups, max_tokens):
    # The C++ orders the candidates (fingerprint, tokens descending, position) by a radix sort while
    # the key fits 32 bits and at most 16 distinct fingerprints occur, else by 128-bit keys; the
    # plain-Python reference sorts tuples. Negative and near-equal fingerprints (hash collisions in
    # the radix sort's group table), repeated token counts (stability) and targets (a candidate subset).
    rng = np.random.default_rng(groups * 1000 + max_tokens % 997)
    world, n = 5, 300
    pool = np.concatenate([rng.integers(-2**63, 2**63 - 1, groups // 2, dtype=np.int64),
                           np.arange(groups - groups // 2, dtype=np.int64) * 64])  # 0, 64, 128, ...: nearby values
    tokens = np.where(rng.random(n) < 0.3, rng.choice([7, 512, max_tokens], n), rng.integers(1, max_tokens + 1, n))
    matches = np.where(rng.random((world, n)) < 0.2, rng.integers(0, 2, (world, n)) * tokens // 2, 0)
    s = states(rng.integers(0, 40, world).tolist(), [10**9 // world] * world,
               rng.integers(0, 10**9 // world, world).tolist(), matches.tolist(), queue_len=n)
    nr = new(tokens, np.where(rng.random(n) < 0.1, rng.integers(0, world, n), -1), rng.random(n) < 0.1,
             pool[rng.integers(0, groups, n)], ids=rng.choice(2**40, n, replace=False))
    cpp, ref = (make_router(name, b).route(s, nr, 200) for b in BACKENDS)
    assert cpp.ranks.tolist() == ref.ranks.tolist()
    assert cpp.expected_num_active_requests == ref.expected_num_active_requests
    assert (cpp.ranks >= 0).sum() > n // 2  # most are placed: the order decides the routing


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_route_reuses_its_buffer_but_never_overwrites_a_kept_result(backend):
    # the result array is the router's buffer, reused only while no caller holds an earlier result
    s = states([0, 0], [0, 0], matches=[[0, 0], [0, 0]], queue_len=2)
    router = make_router("kv-aware", backend)
    kept = router.route(s, new([8, 3]), 4)
    first = kept.ranks.tolist()
    again = router.route(s, new([8, 3]), 4)
    assert again.ranks is not kept.ranks and kept.ranks.tolist() == first == again.ranks.tolist()
    view = again.ranks[:1]  # a view keeps it alive too
    del again
    third = router.route(s, new([8, 3]), 4)
    assert not np.shares_memory(third.ranks, view) and view.tolist() == first[:1]
    del third
    held = id(router._ranks)  # (an id holds no reference)
    assert id(router.route(s, new([8, 3]), 4).ranks) == held  # no earlier result alive: reused
