"""tests/test_scenario_validation.py: loading and validating tllm_sched.scenario/1 files: the fields
a loaded scenario holds, and every malformed input rejected with its one-line message.
(tests/test_scenarios.py replays every shared scenario to its expected log.)"""

import copy
import dataclasses
import json
import re

import pytest

from tllm_sched.scenario import (
    ChunkingConfig,
    Event,
    KvCacheConfig,
    PeftConfig,
    RequestSpec,
    ScenarioError,
    SchedulerConfig,
    load_scenario,
    parse_scenario,
)
from utils import SHARED

SCENARIO_DIR = SHARED / "scenarios"


# --------------------------------------------------------------------------- shared files


def _shared(name):
    path = SCENARIO_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"shared scenario not found: {path}")
    return load_scenario(path)


def test_spot_check_capB21_delay_duplicate_request():
    sc = _shared("capB21_DelayDuplicateRequest_GUARANTEED_NO_EVICT")
    assert sc.format == "tllm_sched.scenario/1"
    assert sc.harness == "capacity"
    assert sc.kv_cache == KvCacheConfig(tokens_per_block=10, num_blocks=20, max_seq_len=50,
                                        enable_block_reuse=True)
    assert sc.kv_cache.enable_partial_reuse and sc.kv_cache.copy_on_partial_reuse
    assert sc.kv_cache.num_secondary_blocks == 0
    assert sc.cross_kv_cache is None
    assert sc.peft == PeftConfig(pages_per_task=15, max_device_pages=100)
    assert sc.scheduler == SchedulerConfig(policy="GUARANTEED_NO_EVICT", max_num_requests=3)
    assert sc.scheduler.max_batch_size == 3  # defaults to max_num_requests
    assert sc.scheduler.chunking is None and sc.scheduler.max_num_tokens is None
    assert (sc.micro_slots, sc.max_input_len, sc.max_iterations) == (1, 1000, 100000)
    assert sc.events == ()
    assert [r.id for r in sc.requests] == [0, 1, 2]
    for req in sc.requests:
        assert req.prompt == tuple(range(21))
        assert req.prompt_len == 21
        assert req.max_new_tokens == 2
        assert req.lora_task_id == 1234
        assert (req.arrive_at, req.priority, req.beam_width, req.draft_tokens) == (0, 0.5, 1, 0)
        assert req.state == "CONTEXT_INIT"
        assert req.encoder_output_len is None and req.context_chunk_size is None


def test_spot_check_prompt_len_expands_to_ones():
    sc = _shared("capB05_SimpleShouldFitInChunk_GUARANTEED_NO_EVICT")
    assert sc.requests[0].prompt == (1,) * 50
    assert sc.requests[0].context_chunk_size == 20
    assert sc.requests[1].lora_task_id == 6789


def test_spot_check_micro_and_priorities():
    micro = _shared("microD03_SimpleNoOverlapMaxNumTokens")
    assert micro.kv_cache is None and micro.peft is None
    assert micro.scheduler.max_batch_size == 2
    assert micro.scheduler.max_num_tokens == 7
    assert micro.scheduler.chunking == ChunkingConfig(policy="EQUAL_PROGRESS", unit_size=5)
    prio = _shared("capB08_RequestsSortedByPriorities")
    assert prio.kv_cache is None
    assert [r.priority for r in prio.requests][:6] == [0.5, 0.5, 0.6, 0.6, 0.6, 1.0]
    assert all(type(r.priority) is float for r in prio.requests)


# --------------------------------------------------------------------------- a valid base


def _base():
    """A small valid scenario exercising most keys; each malformed case mutates a copy."""
    return {
        "format": "tllm_sched.scenario/1",
        "name": "base",
        "harness": "full",
        "kv_cache": {"tokens_per_block": 4, "num_blocks": 8, "max_seq_len": 32},
        "peft": {"pages_per_task": 2, "max_device_pages": 10},
        "scheduler": {"policy": "MAX_UTILIZATION", "max_num_requests": 4},
        "requests": [
            {"id": 0, "prompt_len": 6, "max_new_tokens": 4},
            {"id": 7, "prompt": [5, 6, 7], "max_new_tokens": 2, "arrive_at": 1,
             "priority": 0.9, "lora_task_id": 3},
            {"id": 2, "prompt_len": 8, "max_new_tokens": 8, "draft_tokens": 2},
        ],
        "events": [{"at": 1, "set_draft_tokens": {"ids": [0, 7], "count": 1}}],
    }


def _walk(doc, path):
    """(container, last key) for a dotted path such as "requests.1.prompt"."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        doc = doc[key]
    return doc, keys[-1]


def _set(path, value):
    def mutate(doc):
        container, key = _walk(doc, path)
        container[key] = copy.deepcopy(value)
    return mutate


def _drop(path):
    def mutate(doc):
        container, key = _walk(doc, path)
        del container[key]
    return mutate


def _all(*mutations):
    def mutate(doc):
        for m in mutations:
            m(doc)
    return mutate


def _build(mutation):
    doc = _base()
    mutation(doc)
    return doc


CROSS = {"tokens_per_block": 4, "num_blocks": 4, "max_seq_len": 16}
WITH_CROSS = _all(_set("cross_kv_cache", CROSS),
                  _set("requests.0.encoder_output_len", 5),
                  _set("requests.1.encoder_output_len", 6),
                  _set("requests.2.encoder_output_len", 7))
WITH_REUSE = _set("kv_cache.enable_block_reuse", True)
R1 = "requests[1] (id 7)"


def test_base_is_valid():
    sc = parse_scenario(_base())
    assert sc.scheduler.max_batch_size == 4
    assert sc.requests[0].prompt == (1,) * 6
    assert sc.requests[1] == RequestSpec(id=7, prompt=(5, 6, 7), max_new_tokens=2, arrive_at=1,
                                         priority=0.9, lora_task_id=3)
    assert sc.events == (Event(at=1, ids=(0, 7), count=1),)
    assert parse_scenario(_build(WITH_CROSS)).cross_kv_cache == KvCacheConfig(**CROSS)


MALFORMED = [
    # top level
    ("format-missing", _drop("format"), ["format"]),
    ("format-wrong", _set("format", "tllm_sched.scenario/2"), ["format"]),
    ("format-not-str", _set("format", 1), ["format"]),
    ("top-unknown-key", _set("extra", 1), ["extra", "not a known key"]),
    ("harness-unknown", _set("harness", "fast"), ["harness", '"fast"']),
    ("name-not-str", _set("name", 3), ["name"]),
    ("scheduler-missing", _drop("scheduler"), ["scheduler", "required"]),
    ("scheduler-null", _set("scheduler", None), ["scheduler"]),
    ("requests-missing", _drop("requests"), ["requests", "required"]),
    ("requests-not-list", _set("requests", {"id": 0}), ["requests"]),
    ("micro-slots-zero", _set("micro_slots", 0), ["micro_slots", "positive"]),
    ("max-input-len-zero", _set("max_input_len", 0), ["max_input_len"]),
    ("max-iterations-bool", _set("max_iterations", True), ["max_iterations", "true"]),
    ("max-iterations-over-int32", _set("max_iterations", 2**31), ["max_iterations"]),
    # kv_cache
    ("kv-not-object", _set("kv_cache", [4, 8, 32]), ["kv_cache"]),
    ("kv-unknown-key", _set("kv_cache.block_size", 4), ["kv_cache.block_size"]),
    ("kv-tpb-float", _set("kv_cache.tokens_per_block", 20.5),
     ["kv_cache.tokens_per_block", "20.5"]),
    ("kv-tpb-integral-float", _set("kv_cache.tokens_per_block", 4.0),
     ["kv_cache.tokens_per_block"]),
    ("kv-tpb-bool", _set("kv_cache.tokens_per_block", True), ["kv_cache.tokens_per_block"]),
    ("kv-num-blocks-zero", _set("kv_cache.num_blocks", 0), ["kv_cache.num_blocks", "positive"]),
    ("kv-num-blocks-over-int32", _set("kv_cache.num_blocks", 2**31), ["kv_cache.num_blocks"]),
    ("kv-max-seq-len-missing", _drop("kv_cache.max_seq_len"), ["kv_cache.max_seq_len"]),
    ("kv-reuse-int", _set("kv_cache.enable_block_reuse", 1), ["kv_cache.enable_block_reuse"]),
    ("kv-partial-reuse-null", _set("kv_cache.enable_partial_reuse", None),
     ["kv_cache.enable_partial_reuse"]),
    ("kv-secondary-negative", _set("kv_cache.num_secondary_blocks", -1),
     ["kv_cache.num_secondary_blocks"]),
    # cross_kv_cache
    ("cross-reuse", _all(WITH_CROSS, _set("cross_kv_cache.enable_block_reuse", True)),
     ["cross_kv_cache.enable_block_reuse"]),
    ("cross-needs-encoder-len", _all(WITH_CROSS, _drop("requests.1.encoder_output_len")),
     [R1, "encoder_output_len", "required"]),
    ("cross-seq-len", _all(WITH_CROSS, _set("requests.1.encoder_output_len", 17)),
     [R1, "encoder_output_len", "cross_kv_cache.max_seq_len"]),
    ("cross-blocks", _all(WITH_CROSS, _set("cross_kv_cache.num_blocks", 1)),
     ["requests[0] (id 0)", "encoder_output_len", "cross_kv_cache.num_blocks"]),
    ("cross-unknown-key", _all(WITH_CROSS, _set("cross_kv_cache.size", 1)),
     ["cross_kv_cache.size"]),
    # peft
    ("peft-missing-key", _drop("peft.max_device_pages"), ["peft.max_device_pages"]),
    ("peft-zero-pages", _set("peft.pages_per_task", 0), ["peft.pages_per_task"]),
    ("peft-not-object", _set("peft", 5), ["peft"]),
    # scheduler
    ("policy-unknown", _set("scheduler.policy", "FCFS"), ["scheduler.policy"]),
    ("policy-missing", _drop("scheduler.policy"), ["scheduler.policy", "required"]),
    ("max-num-requests-zero", _set("scheduler.max_num_requests", 0),
     ["scheduler.max_num_requests"]),
    ("max-batch-size-null", _set("scheduler.max_batch_size", None), ["scheduler.max_batch_size"]),
    ("max-num-tokens-zero", _set("scheduler.max_num_tokens", 0), ["scheduler.max_num_tokens"]),
    ("max-context-length-str", _set("scheduler.max_context_length", "12"),
     ["scheduler.max_context_length"]),
    ("look-ahead-str", _set("scheduler.two_steps_look_ahead", "yes"),
     ["scheduler.two_steps_look_ahead"]),
    ("scheduler-unknown-key", _set("scheduler.prefill_first", True), ["scheduler.prefill_first"]),
    ("chunking-policy", _set("scheduler.chunking", {"policy": "ROUND_ROBIN", "unit_size": 4}),
     ["scheduler.chunking.policy"]),
    ("chunking-unit-missing", _set("scheduler.chunking", {"policy": "EQUAL_PROGRESS"}),
     ["scheduler.chunking.unit_size"]),
    ("chunking-unit-zero", _set("scheduler.chunking", {"policy": "EQUAL_PROGRESS",
                                                       "unit_size": 0}),
     ["scheduler.chunking.unit_size"]),
    ("chunking-unknown-key", _set("scheduler.chunking", {"policy": "EQUAL_PROGRESS",
                                                         "unit_size": 4, "x": 1}),
     ["scheduler.chunking.x"]),
    ("chunking-harness-without-chunking", _set("harness", "chunking"), ["scheduler.chunking"]),
    ("reuse-unit-size-not-multiple",
     _all(WITH_REUSE, _set("scheduler.chunking", {"policy": "EQUAL_PROGRESS", "unit_size": 6})),
     ["scheduler.chunking.unit_size", "tokens_per_block"]),
    # requests: shape, ids, prompt
    ("request-not-object", _set("requests.1", [7]), ["requests[1]"]),
    ("request-unknown-key", _set("requests.1.promt", [1]), [R1, "promt"]),
    ("request-odd-key", _set("requests.1.a\nb", 1), [R1, "not a known key"]),
    ("id-missing", _drop("requests.1.id"), ["requests[1]", "id", "required"]),
    ("id-negative", _set("requests.1.id", -1), ["requests[1]", "id"]),
    ("id-over-int64", _set("requests.1.id", 2**63), ["requests[1]", "id"]),
    ("id-bool", _set("requests.1.id", False), ["requests[1]", "id"]),
    ("id-duplicate", _set("requests.2.id", 0), ["requests[2] (id 0)", "id", "requests[0]"]),
    ("prompt-and-prompt-len", _set("requests.1.prompt_len", 3), [R1, "prompt_len"]),
    ("prompt-neither", _drop("requests.1.prompt"), [R1, "prompt"]),
    ("prompt-empty", _set("requests.1.prompt", []), [R1, "prompt"]),
    ("prompt-not-list", _set("requests.1.prompt", "567"), [R1, "prompt"]),
    ("prompt-token-negative", _set("requests.1.prompt", [5, -1, 7]), [R1, "prompt[1]"]),
    ("prompt-token-over-int32", _set("requests.1.prompt", [2**31]), [R1, "prompt[0]"]),
    ("prompt-token-float", _set("requests.1.prompt", [5, 6.5]), [R1, "prompt[1]"]),
    ("prompt-len-zero", _set("requests.0.prompt_len", 0), ["requests[0] (id 0)", "prompt_len"]),
    ("prompt-len-over-int32", _set("requests.0.prompt_len", 2**31),
     ["requests[0] (id 0)", "prompt_len"]),
    # requests: other fields
    ("max-new-tokens-zero", _set("requests.1.max_new_tokens", 0), [R1, "max_new_tokens"]),
    ("max-new-tokens-missing", _drop("requests.1.max_new_tokens"), [R1, "max_new_tokens"]),
    ("arrive-at-negative", _set("requests.1.arrive_at", -1), [R1, "arrive_at"]),
    ("arrive-at-over-int32", _set("requests.1.arrive_at", 2**31), [R1, "arrive_at"]),
    ("priority-above-one", _set("requests.1.priority", 1.5), [R1, "priority"]),
    ("priority-negative", _set("requests.1.priority", -0.1), [R1, "priority"]),
    ("priority-bool", _set("requests.1.priority", True), [R1, "priority"]),
    ("priority-str", _set("requests.1.priority", "high"), [R1, "priority"]),
    ("priority-nan", _set("requests.1.priority", float("nan")), [R1, "priority"]),
    ("lora-negative", _set("requests.1.lora_task_id", -1), [R1, "lora_task_id"]),
    ("lora-over-int64", _set("requests.1.lora_task_id", 2**63), [R1, "lora_task_id"]),
    ("lora-float", _set("requests.1.lora_task_id", 3.0), [R1, "lora_task_id"]),
    ("beam-width-with-kv-cache", _set("requests.1.beam_width", 2), [R1, "beam_width"]),
    ("beam-width-zero", _set("requests.1.beam_width", 0), [R1, "beam_width"]),
    ("draft-tokens-negative", _set("requests.1.draft_tokens", -1), [R1, "draft_tokens"]),
    ("encoder-len-zero", _set("requests.1.encoder_output_len", 0), [R1, "encoder_output_len"]),
    ("state-unknown", _set("requests.1.state", "GENERATION_IN_PROGRESS"), [R1, "state"]),
    ("chunk-size-zero", _set("requests.1.context_chunk_size", 0), [R1, "context_chunk_size"]),
    ("chunk-size-reuse-not-multiple", _all(WITH_REUSE, _set("requests.1.context_chunk_size", 6)),
     [R1, "context_chunk_size", "tokens_per_block"]),
    ("exceeds-max-seq-len", _set("requests.2.max_new_tokens", 25),
     ["requests[2] (id 2)", "max_new_tokens", "kv_cache.max_seq_len"]),
    ("exceeds-num-blocks", _all(_set("kv_cache.max_seq_len", 100), _set("kv_cache.num_blocks", 3)),
     ["requests[2] (id 2)", "kv_cache.num_blocks"]),
    # events
    ("events-not-list", _set("events", {}), ["events"]),
    ("event-not-object", _set("events.0", 1), ["events[0]"]),
    ("event-unknown-key", _set("events.0.when", 1), ["events[0].when"]),
    ("event-at-negative", _set("events.0.at", -1), ["events[0].at"]),
    ("event-at-missing", _drop("events.0.at"), ["events[0].at"]),
    ("event-body-missing", _drop("events.0.set_draft_tokens"), ["events[0].set_draft_tokens"]),
    ("event-ids-empty", _set("events.0.set_draft_tokens.ids", []),
     ["events[0].set_draft_tokens.ids"]),
    ("event-ids-unknown-request", _set("events.0.set_draft_tokens.ids", [0, 99]),
     ["events[0].set_draft_tokens.ids[1]", "id 99"]),
    ("event-ids-bool", _set("events.0.set_draft_tokens.ids", [True]),
     ["events[0].set_draft_tokens.ids[0]"]),
    ("event-count-missing", _drop("events.0.set_draft_tokens.count"),
     ["events[0].set_draft_tokens.count"]),
    ("event-count-negative", _set("events.0.set_draft_tokens.count", -1),
     ["events[0].set_draft_tokens.count"]),
    ("event-body-unknown-key", _set("events.0.set_draft_tokens.all", True),
     ["events[0].set_draft_tokens.all"]),
]


@pytest.mark.parametrize("mutation, expected", [pytest.param(m, e, id=name)
                                                for name, m, e in MALFORMED])
def test_malformed_is_rejected(mutation, expected):
    with pytest.raises(ScenarioError, match=re.escape(expected[0])) as info:
        parse_scenario(_build(mutation))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_message_examples():
    with pytest.raises(ScenarioError, match=r"^kv_cache\.tokens_per_block: must be an int, "
                                            r"got 20\.5$"):
        parse_scenario(_build(_set("kv_cache.tokens_per_block", 20.5)))
    with pytest.raises(ScenarioError, match=r"^requests\[1\] \(id 7\): max_new_tokens must be a "
                                            r"positive int, got 0$"):
        parse_scenario(_build(_set("requests.1.max_new_tokens", 0)))


@pytest.mark.parametrize("value", [None, [], "scenario", 3])
def test_top_level_not_an_object(value):
    with pytest.raises(ScenarioError, match="must be a JSON object"):
        parse_scenario(value)


def test_scenario_error_is_value_error():
    assert issubclass(ScenarioError, ValueError)
    assert str(ScenarioError("a\nb\r\nc")) == "a b c"


# --------------------------------------------------------------------------- edge values accepted


def test_boundary_values_are_accepted():
    doc = _build(_all(
        _set("requests.1.id", 2**63 - 1),
        _set("events.0.set_draft_tokens.ids", [0, 2**63 - 1]),
        _set("requests.1.lora_task_id", 2**63 - 1),
        _set("requests.1.prompt", [0, 2**31 - 1]),
        _set("requests.1.arrive_at", 0),
        _set("requests.1.draft_tokens", 0),
        _set("requests.1.priority", 1),
        _set("requests.0.priority", 0),
        _set("requests.2.lora_task_id", 0),
        _set("events.0.at", 0),
        _set("events.0.set_draft_tokens.count", 0),
        _set("kv_cache.num_secondary_blocks", 0),
        _set("max_iterations", 2**31 - 1),
    ))
    sc = parse_scenario(doc)
    assert sc.requests[1].id == 2**63 - 1 and sc.requests[1].lora_task_id == 2**63 - 1
    assert sc.requests[1].prompt == (0, 2**31 - 1)
    assert sc.requests[1].priority == 1.0 and type(sc.requests[1].priority) is float
    assert sc.requests[0].priority == 0.0
    assert sc.events == (Event(at=0, ids=(0, 2**63 - 1), count=0),)


def test_nullable_keys_and_exact_fits():
    doc = _build(_all(
        _set("kv_cache", None),
        _set("cross_kv_cache", None),
        _set("peft", None),
        _set("scheduler.max_num_tokens", None),
        _set("scheduler.max_context_length", None),
        _set("scheduler.chunking", None),
        _set("requests.1.lora_task_id", None),
        _set("requests.1.encoder_output_len", None),
        _set("requests.1.context_chunk_size", None),
        _set("requests.1.beam_width", 4),  # allowed without any KV cache
        _set("requests.1.state", "ENCODER_INIT"),
    ))
    sc = parse_scenario(doc)
    assert sc.kv_cache is sc.cross_kv_cache is sc.peft is None
    assert sc.requests[1].beam_width == 4 and sc.requests[1].state == "ENCODER_INIT"
    # prompt + max_new_tokens exactly max_seq_len, exactly num_blocks * tokens_per_block
    exact = _build(_all(_set("kv_cache.num_blocks", 4), _set("kv_cache.max_seq_len", 16)))
    assert parse_scenario(exact).requests[2].prompt_len + 8 == 16


def test_block_reuse_multiples_and_chunking_harness():
    doc = _build(_all(
        WITH_REUSE,
        _set("harness", "chunking"),
        _set("scheduler.chunking", {"policy": "FIRST_COME_FIRST_SERVED", "unit_size": 8}),
        _set("requests.1.context_chunk_size", 4),
    ))
    sc = parse_scenario(doc)
    assert sc.scheduler.chunking == ChunkingConfig("FIRST_COME_FIRST_SERVED", 8)
    assert sc.requests[1].context_chunk_size == 4


def test_dataclasses_are_frozen_and_defaults():
    sc = parse_scenario(_base())
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'name'"):
        sc.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'max_new_tokens'"):
        sc.requests[0].max_new_tokens = 1
    assert SchedulerConfig("STATIC_BATCH", 5).max_batch_size == 5
    assert SchedulerConfig("STATIC_BATCH", 5, max_batch_size=2).max_batch_size == 2
    req = RequestSpec(id=1, prompt=(1, 1), max_new_tokens=3)
    assert (req.arrive_at, req.priority, req.lora_task_id, req.state) == (0, 0.5, None,
                                                                          "CONTEXT_INIT")


# --------------------------------------------------------------------------- load_scenario


def _write(tmp_path, text, name="s.json"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_load_roundtrip(tmp_path):
    path = _write(tmp_path, json.dumps(_base()))
    assert load_scenario(path) == parse_scenario(_base())
    assert load_scenario(str(path)) == parse_scenario(_base())


@pytest.mark.parametrize("text, expected", [
    pytest.param('{"format": ', "invalid JSON at line 1", id="syntax"),
    pytest.param('{\n  "format": "tllm_sched.scenario/1",\n  oops\n}', "line 3", id="syntax-line"),
    pytest.param('{"format": "tllm_sched.scenario/1", "format": "x"}', "duplicate key",
                 id="duplicate-key"),
    pytest.param('{"priority": NaN}', "NaN", id="nan"),
    pytest.param(b'{"format": "\xff"}', "UTF-8", id="not-utf8"),
    pytest.param("[" * 100000 + "]" * 100000, "invalid JSON", id="too-deep"),
    pytest.param('{"format": "tllm_sched.scenario/1", "requests": []}', "scheduler",
                 id="validation"),
])
def test_load_errors_name_the_file(tmp_path, text, expected):
    path = _write(tmp_path, text, name="bad file.json")
    with pytest.raises(ScenarioError, match="^" + re.escape(f"{path}: ")) as info:
        load_scenario(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ScenarioError, match=re.escape(str(path))) as info:
        load_scenario(path)
    assert "\n" not in str(info.value)


def test_load_directory(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path)
