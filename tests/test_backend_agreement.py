"""tests/test_backend_agreement.py: hostile configurations and inputs get one answer from every backend.

The differential test (test_differential.py) replays valid scenarios. Here hypothesis draws the
edges instead: draft counts from 0 to 2**31 - 1 (beyond a request's reserved token storage the
count is refused), token budgets of 0, 1 and 2**31 - 1, chunk units of 1 and 2**31 - 1, request ids
near 2**63 - 1, batch sizes of 1 and huge ones, max_context_length of 1. Each draw is built
once per backend from scratch and scheduled for three steps through the simulated executor; the
outcome (every output array, the table's columns after each step, or the exception's type and
message at the point it was raised) must be the same on all three. TLLM_AGREEMENT_EXAMPLES sets
the count (default 300, the CI figure).

The rest pins single cases by hand: the draft-count overflow the python backend used to take
into a 64-token budget, managers of another table, configurations validated where they are
built, a RequestList subclass that lies about its slots, and the messages for inputs that are
not what the bindings take (big-endian arrays, torch tensors, lists, wrong objects).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tllm_sched as ts
from tllm_sched.config import INT32_MAX, ChunkingConfig, KvCacheConfig, PeftConfig, SchedulerConfig
from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES
from tllm_sched.scheduler import BACKENDS, Scheduler

EXAMPLES = int(os.environ.get("TLLM_AGREEMENT_EXAMPLES", "300"))
S = ts.LlmRequestState
I64_MAX = 2**63 - 1
_EMPTY = np.zeros(0, dtype=np.int32)


# ----------------------------------------------------------------------------- the differential test

@st.composite
def setups(draw):
    tpb = draw(st.sampled_from([1, 4, 16]))
    n = draw(st.integers(1, 5))
    # Ids near both ends of the int64 range, never repeated.
    ids = draw(st.lists(st.one_of(st.integers(0, 20), st.integers(I64_MAX - 20, I64_MAX)),
                        min_size=n, max_size=n, unique=True))
    requests = []
    for rid in ids:
        plen, max_new = draw(st.integers(1, 12)), draw(st.integers(1, 6))
        requests.append(dict(
            id=rid, plen=plen, max_new=max_new, initial_drafts=draw(st.sampled_from([0, 0, 3])),
            running=draw(st.booleans()),
            # Up to the reserved storage, just past it, and the int32 maximum.
            drafts=draw(st.sampled_from([None, None, None, 0, 1, 2, 5, "reserved", "reserved", "reserved+1",
                                         INT32_MAX])),
        ))
    chunking = draw(st.one_of(st.none(), st.builds(
        dict, policy=st.sampled_from(CHUNKING_POLICIES),
        unit=st.sampled_from([1, 1, tpb, tpb, 7, INT32_MAX, INT32_MAX, 0, -4]))))
    return dict(
        tpb=tpb, requests=requests,
        blocks=draw(st.sampled_from([2, 8, 64])),
        policy=draw(st.sampled_from(list(CAPACITY_POLICIES))),
        max_num_requests=draw(st.sampled_from([1, 2, 8, INT32_MAX])),
        max_batch_size=draw(st.sampled_from([None, 1, 3, INT32_MAX])),
        max_num_tokens=draw(st.sampled_from([None, None, 1, 1, 2, 5, 64, INT32_MAX, 0, -5])),
        max_context_length=draw(st.sampled_from([None, None, 1, 6, INT32_MAX])),
        chunking=chunking,
        two_steps=draw(st.booleans()),
    )


def _outcome(backend: str, spec: dict) -> list:
    """What one backend does with `spec`: the outputs and table after each step, ending with the
    (type, message) of the first exception, wherever it came from."""
    trail = []
    try:
        t = ts.RequestTable(8)
        kv = ts.KVCacheManager(t, spec["tpb"], spec["blocks"] + 64, 64)  # room to start the running ones
        ex = ts.SimExecutor(t, kv, None, 1000)
        active = ts.RequestList(t)
        for r in spec["requests"]:
            req = t.add_request(r["id"], [1 + (r["id"] % 5)] * r["plen"], r["max_new"],
                                num_draft_tokens=r["initial_drafts"])
            active.append(req)
            if r["running"]:
                ex.apply(_EMPTY, _EMPTY, np.array([req.slot], dtype=np.int32))  # the whole context, one token
        for r in spec["requests"]:
            d = r["drafts"]
            if d is not None:
                reserved = r["plen"] + r["max_new"] + r["initial_drafts"]
                d = {"reserved": reserved, "reserved+1": reserved + 1}.get(d, d)
                t.get(r["id"]).set_num_draft_tokens(d)
        ch = spec["chunking"]
        cfg = SchedulerConfig(
            spec["policy"], spec["max_num_requests"], max_batch_size=spec["max_batch_size"],
            max_num_tokens=spec["max_num_tokens"], max_context_length=spec["max_context_length"],
            chunking=None if ch is None else ChunkingConfig(ch["policy"], ch["unit"]),
            two_steps_look_ahead=spec["two_steps"])
        sch = Scheduler(cfg, t, kv, backend=backend)
        for _ in range(3):
            out = sch.schedule(active)
            trail.append([a.tolist() for a in (out.fitting, out.fitting_disagg_gen_init, out.paused,
                                               out.context, out.generation)])
            trail.append({k: v.tolist() for k, v in t.columns().items()})
            finished = ex.apply(out.paused, out.fitting_disagg_gen_init,
                                np.concatenate([out.context, out.generation]))
            active.remove_slots(finished)
    except Exception as e:  # noqa: BLE001 - the exception is the outcome compared
        trail.append((type(e).__name__, str(e)))
    return trail


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=setups())
def test_every_backend_gives_one_answer_at_the_edges(spec):
    want = _outcome("cpp", spec)
    for backend in BACKENDS[1:]:
        assert _outcome(backend, spec) == want, backend


# ----------------------------------------------------------------------------- hand-made cases

def _draft_overflow_bed():
    """A generating request and a waiting 5-token context, GUARANTEED_NO_EVICT, budget 64."""
    t = ts.RequestTable(4)
    kv = ts.KVCacheManager(t, 4, 32, 64)
    ex = ts.SimExecutor(t, kv, None, 1000)
    g = t.add_request(0, [1] * 5, 8)
    ex.apply(_EMPTY, _EMPTY, np.array([g.slot], dtype=np.int32))
    c = t.add_request(1, [2] * 5, 8)
    active = ts.RequestList(t)
    active.append(g)
    active.append(c)
    return t, kv, g, active


@pytest.mark.parametrize("count", [14, 2**31 - 1])
def test_draft_counts_beyond_the_reserved_storage_are_refused(count):
    # Reserved: 5 prompt + 8 new + 0 drafts = 13 tokens. The count is refused whatever the backend
    # (the table's setter), and the request is unchanged.
    t, kv, g, active = _draft_overflow_bed()
    with pytest.raises(ValueError, match=f"request 0: {count} draft tokens exceed the request's reserved token "
                                         "storage of 13 tokens"):
        g.set_num_draft_tokens(count)
    assert g.num_draft_tokens == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_largest_draft_count_schedules_alike(backend):
    # 13 drafts (the reserved storage) on the generation: it needs 1 + 13 = 14 tokens of a 10-token
    # budget, so nothing fits (head of line: the context behind it waits) on every backend. The
    # python backend once added 1 + (2**31 - 1) in int32 and scheduled both.
    t, kv, g, active = _draft_overflow_bed()
    g.set_num_draft_tokens(13)
    out = Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 4, max_num_tokens=10), t, kv, backend=backend).schedule(active)
    assert (out.context.tolist(), out.generation.tolist()) == ([], [])


def test_a_scenario_event_beyond_the_reserved_storage_is_refused_before_the_run():
    from tllm_sched.scenario import ScenarioError, parse_scenario

    obj = {"format": "tllm_sched.scenario/1", "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 2},
           "requests": [{"id": 3, "prompt_len": 5, "max_new_tokens": 8, "draft_tokens": 2}],
           "events": [{"at": 1, "set_draft_tokens": {"ids": [3], "count": 16}}]}
    with pytest.raises(ScenarioError, match=r"events\[0\].set_draft_tokens.count: is too large: 16 draft tokens "
                                            r"exceed the reserved token storage of request 3 \(prompt length 5 \+ "
                                            r"max_new_tokens 8 \+ draft_tokens 2 = 15\)"):
        parse_scenario(obj)
    obj["events"][0]["set_draft_tokens"]["count"] = 15
    assert parse_scenario(obj).events[0].count == 15


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["kv_cache_manager", "cross_kv_cache_manager"])
def test_a_cache_of_another_table_is_refused_on_every_backend(backend, which):
    a, b = ts.RequestTable(4), ts.RequestTable(4)
    kv_a = ts.KVCacheManager(a, 4, 8, 32)
    kv_b = ts.KVCacheManager(b, 4, 8, 32, cross_kv=which == "cross_kv_cache_manager")
    args = (kv_b,) if which == "kv_cache_manager" else (kv_a, kv_b)
    with pytest.raises(ValueError, match=f"^{which} belongs to another RequestTable$"):
        Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 2), a, *args, backend=backend)
    assert kv_a.table is a and kv_b.table is b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("position,bad,message", [
    (0, {"policy": "GUARANTEED_NO_EVICT"}, "config: expected a SchedulerConfig, got dict"),
    (1, np.zeros(3), "table: expected a RequestTable, got ndarray"),
    (2, "kv", "kv_cache_manager: expected a KVCacheManager or None, got str 'kv'"),
    (3, 7, "cross_kv_cache_manager: expected a KVCacheManager or None, got int"),
    (4, "table", "peft_cache_manager: expected a PeftCacheManager or None, got RequestTable"),
])
def test_a_wrong_object_is_named_on_every_backend(backend, position, bad, message):
    t = ts.RequestTable(2)
    args = [SchedulerConfig("GUARANTEED_NO_EVICT", 2), t, None, None, None]
    args[position] = t if isinstance(bad, str) and bad == "table" else bad
    with pytest.raises(TypeError, match=f"^{message}$"):
        Scheduler(*args, backend=backend)


# Every SchedulerConfig field with values refused where the config is built: (kwargs, error, words).
BAD_CONFIGS = [
    (dict(policy="gne"), ValueError, "unknown capacity scheduler policy 'gne'"),
    (dict(policy=None), TypeError, "SchedulerConfig.policy must be a str"),
    (dict(max_num_requests=0), ValueError, "SchedulerConfig.max_num_requests must be a positive int, got 0"),
    (dict(max_num_requests=True), TypeError, "SchedulerConfig.max_num_requests must be a positive int, got bool"),
    (dict(max_num_requests=2.0), TypeError, "max_num_requests must be a positive int, got float"),
    (dict(max_num_requests=2**31), ValueError, "max_num_requests must be at most 2147483647"),
    (dict(max_batch_size=0), ValueError, "SchedulerConfig.max_batch_size must be a positive int, got 0"),
    (dict(max_num_tokens=0), ValueError, "SchedulerConfig.max_num_tokens must be a positive int or None, got 0"),
    (dict(max_num_tokens=-5), ValueError, "max_num_tokens must be a positive int or None, got -5"),
    (dict(max_num_tokens=np.int32(8)), TypeError, "max_num_tokens must be a positive int or None, got int32"),
    (dict(max_context_length=0), ValueError, "max_context_length must be a positive int or None, got 0"),
    (dict(chunking=("EQUAL_PROGRESS", 4)), TypeError, "SchedulerConfig.chunking must be a ChunkingConfig or None"),
    (dict(two_steps_look_ahead=1), TypeError, "SchedulerConfig.two_steps_look_ahead must be a bool"),
]


@pytest.mark.parametrize("kwargs,error,words", [pytest.param(*c, id=next(iter(c[0]))) for c in BAD_CONFIGS])
def test_scheduler_config_is_validated_where_it_is_built(kwargs, error, words):
    base = dict(policy="GUARANTEED_NO_EVICT", max_num_requests=4)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        SchedulerConfig(**{**base, **kwargs})


@settings(max_examples=min(EXAMPLES, 200), deadline=None)
@given(unit=st.one_of(st.integers(max_value=0), st.integers(min_value=INT32_MAX + 1), st.booleans(),
                      st.floats(allow_nan=True), st.text(max_size=3)),
       policy=st.one_of(st.sampled_from(CHUNKING_POLICIES), st.text(max_size=8)))
def test_chunking_config_refuses_every_bad_unit(unit, policy):
    with pytest.raises((TypeError, ValueError)) as e:
        ChunkingConfig(policy, unit)
    assert str(e.value).startswith(("ChunkingConfig.", "unknown context chunking policy"))


@pytest.mark.parametrize("make,words", [
    (lambda: KvCacheConfig(16, 0, 64), "KvCacheConfig.num_blocks must be a positive int, got 0"),
    (lambda: KvCacheConfig(16, 8, 64, enable_block_reuse="yes"), "KvCacheConfig.enable_block_reuse must be a bool"),
    (lambda: KvCacheConfig(16, 8, 64, num_secondary_blocks=-1), "num_secondary_blocks must be a non-negative int"),
    (lambda: PeftConfig(1, True), "PeftConfig.max_device_pages must be a positive int, got bool"),
])
def test_cache_configs_are_validated_where_they_are_built(make, words):
    with pytest.raises((TypeError, ValueError), match=words):
        make()


class _LyingList(ts.RequestList):
    """A RequestList whose Python properties claim other slots and another table."""

    @property
    def slots(self):
        return np.array([0, 0], dtype=np.int32)

    def requests(self):
        return [self.table.request_at(0)] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_list_subclass_cannot_make_a_backend_schedule_twice(backend):
    # The backends read the C++ list (one request, slot 1 after a removed slot 0), as cpp does.
    t = ts.RequestTable(4)
    kv = ts.KVCacheManager(t, 4, 16, 64)
    gone, kept = t.add_request(9, [1, 2], 3), t.add_request(1, [1, 2], 3)
    t.remove_request(gone)
    lst = _LyingList(t)
    lst.append(kept)
    out = Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 4), t, kv, backend=backend).schedule(lst)
    assert (out.fitting.tolist(), out.context.tolist()) == ([1], [1])


# ----------------------------------------------------------------------------- what was given

def _bed(backend):
    t = ts.RequestTable(4)
    kv = ts.KVCacheManager(t, 4, 16, 64)
    r = t.add_request(1, [1, 2], 3)
    return t, kv, r, Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", 4), t, kv, backend=backend)


BIG_ENDIAN = "a big-endian numpy array (dtype >i4); convert it with .astype(its dtype.newbyteorder('='))"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make,given_as", [
    (lambda s: np.array(s, dtype=">i4"), BIG_ENDIAN),
    (lambda s: list(s), "list"),
    (lambda s: memoryview(np.array(s, dtype=np.int32)), "memoryview"),
])
@pytest.mark.parametrize("stage", ["schedule_capacity", "schedule_micro"])
def test_slot_arrays_that_are_not_numpy_int32_are_named(backend, make, given_as, stage):
    t, kv, r, sch = _bed(backend)
    with pytest.raises(TypeError) as e:
        getattr(sch, stage)(make([r.slot]))
    assert str(e.value) == f"active_requests: expected a RequestList or an int32 array of slots, got {given_as}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_torch_tensor_of_slots_is_refused_alike(backend):
    # The bindings alone would take it through DLPack; the facade refuses it on every backend.
    torch = pytest.importorskip("torch")
    t, kv, r, sch = _bed(backend)
    with pytest.raises(TypeError, match="^active_requests: expected a RequestList or an int32 array of slots, "
                                        "got torch.Tensor$"):
        sch.schedule_capacity(torch.tensor([r.slot], dtype=torch.int32))


@pytest.mark.parametrize("call,message", [
    (lambda t, kv, r: t.request_ids(np.array([r.slot], dtype=">i4")), f"slots: expected an int32 numpy array, got {BIG_ENDIAN}"),
    (lambda t, kv, r: kv.get_needed_blocks_one_step_sum([r.slot]), "slots: expected an int32 numpy array, got list"),
    (lambda t, kv, r: t.slots_of(np.array([1], dtype=">i8")),
     "request_ids: expected an int64 numpy array, got a big-endian numpy array (dtype >i8); convert it with "
     ".astype(its dtype.newbyteorder('='))"),
    (lambda t, kv, r: t.add_request(2, np.array([1, 2], dtype=">i4"), 3),
     f"input_tokens: expected a list of ints or a 1-D integer array in host memory, got {BIG_ENDIAN}"),
    (lambda t, kv, r: t.set_context_chunk_sizes(np.array([r.slot], dtype=np.int32), np.array([1], dtype=np.int32), [0]),
     "draft_discards: expected an int32 numpy array, got list"),
])
def test_binding_array_arguments_name_what_was_given(call, message):
    t, kv, r, _ = _bed("cpp")
    with pytest.raises(TypeError) as e:
        call(t, kv, r)
    assert str(e.value) == message


def test_tokens_torch_without_torch_names_torch(monkeypatch):
    t, kv, r, _ = _bed("cpp")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were missing
    with pytest.raises(ImportError, match=r"^tokens_torch needs torch \(pip install torch==2.13.0\); tokens\(\) is "
                                          r"the same view as a numpy array$"):
        r.tokens_torch()
    assert r.tokens.tolist() == [1, 2]
