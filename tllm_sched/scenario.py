"""tllm_sched/scenario.py: load and validate tllm_sched.scenario/1 files

A scenario (design.md, "Replay scenarios") is one JSON object that fully determines a
replay run. `parse_scenario` turns a decoded JSON value into frozen dataclasses;
`load_scenario` reads and decodes a file first. Everything design.md lists as rejected
before the run starts raises `ScenarioError`, whose message is one line naming the key
path and, where a request is involved, its id, e.g.

    requests[2] (id 7): max_new_tokens must be a positive int, got 0
    kv_cache.tokens_per_block: must be an int, got 20.5

Types are strict: a boolean is not an int, 20.5 and 20.0 are not ints, and null
is accepted only where the format allows it. The policy names come from
tllm_sched.registry.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from tllm_sched import _core
from tllm_sched.config import ChunkingConfig, KvCacheConfig, PeftConfig, SchedulerConfig
from tllm_sched.files import SCENARIO_MAX_BYTES, FileProblem, open_input
from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES, WAITING_QUEUE_POLICIES

__all__ = [
    "FORMAT",
    "HARNESSES",
    "POLICIES",
    "CHUNKING_POLICIES",
    "REQUEST_STATES",
    "ScenarioError",
    "KvCacheConfig",
    "PeftConfig",
    "ChunkingConfig",
    "SchedulerConfig",
    "RequestSpec",
    "Event",
    "Scenario",
    "parse_scenario",
    "load_scenario",
]

FORMAT = "tllm_sched.scenario/1"
HARNESSES = ("full", "capacity", "micro", "chunking")
POLICIES = tuple(CAPACITY_POLICIES)
REQUEST_STATES = ("CONTEXT_INIT", "ENCODER_INIT", "DISAGG_GENERATION_INIT")

MAX_INT32 = 2**31 - 1  # bound of every integer except ids and LoRA task ids
MAX_INT64 = 2**63 - 1  # bound of request ids and LoRA task ids


class ScenarioError(ValueError):
    """An invalid scenario; the message is a single line naming the key path."""

    def __init__(self, message: object) -> None:
        # Fold any line break (from a file name, say) so the message stays one line.
        super().__init__(" ".join(str(message).splitlines()))


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class RequestSpec:
    """One request as the scenario file gives it."""

    id: int  # unique request id, 0 .. 2**63-1
    prompt: Tuple[int, ...]  # prompt token ids (all 1s when the file gave prompt_len)
    max_new_tokens: int  # tokens to generate
    arrive_at: int = 0  # iteration at which it joins the active list
    priority: float = 0.5  # in [0, 1]; higher is inserted earlier
    lora_task_id: Optional[int] = None  # LoRA task, or None without LoRA
    beam_width: int = 1  # beams (> 1 only without any KV cache)
    draft_tokens: int = 0  # speculative draft tokens
    encoder_output_len: Optional[int] = None  # encoder tokens (cross cache sequence length)
    state: str = "CONTEXT_INIT"  # "CONTEXT_INIT", "ENCODER_INIT" or "DISAGG_GENERATION_INIT"
    context_chunk_size: Optional[int] = None  # chunk size set before the first iteration

    @property
    def prompt_len(self) -> int:
        """Number of prompt tokens."""
        return len(self.prompt)


@dataclass(frozen=True)
class Event:
    """A `set_draft_tokens` event."""

    at: int  # iteration at whose start it applies (after arrivals)
    ids: Tuple[int, ...]  # requests whose draft token count is set
    count: int  # the new draft token count


@dataclass(frozen=True)
class Scenario:
    """A whole validated scenario file."""

    format: str  # always FORMAT
    name: str  # free text
    harness: str  # "full", "capacity", "micro" or "chunking"
    kv_cache: Optional[KvCacheConfig]  # self-attention cache, or None for none
    cross_kv_cache: Optional[KvCacheConfig]  # cross-attention cache, or None for none
    peft: Optional[PeftConfig]  # PEFT page cache, or None for none
    scheduler: SchedulerConfig  # scheduler settings
    micro_slots: int  # micro-batches in flight
    max_input_len: int  # limit used by pause()
    requests: Tuple[RequestSpec, ...]  # in file order
    events: Tuple[Event, ...]  # in file order
    max_iterations: int  # a run failure if requests remain after this many


# --------------------------------------------------------------------------- helpers

_REQUIRED = object()  # sentinel default: the key must be present

_TOP_KEYS = (
    "format", "name", "harness", "kv_cache", "cross_kv_cache", "peft", "scheduler",
    "micro_slots", "max_input_len", "requests", "events", "max_iterations",
)
_KV_KEYS = (
    "tokens_per_block", "num_blocks", "max_seq_len", "enable_block_reuse",
    "enable_partial_reuse", "copy_on_partial_reuse", "num_secondary_blocks",
)
_PEFT_KEYS = ("pages_per_task", "max_device_pages")
_CHUNKING_KEYS = ("policy", "unit_size")
_SCHEDULER_KEYS = (
    "policy", "max_num_requests", "max_batch_size", "max_num_tokens",
    "max_context_length", "chunking", "two_steps_look_ahead", "fused",
    "waiting_queue_policy", "max_num_active_requests",
)
_REQUEST_KEYS = (
    "id", "prompt", "prompt_len", "max_new_tokens", "arrive_at", "priority",
    "lora_task_id", "beam_width", "draft_tokens", "encoder_output_len", "state",
    "context_chunk_size",
)
_EVENT_KEYS = ("at", "set_draft_tokens")
_DRAFT_KEYS = ("ids", "count")

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class _At:
    """Where an object sits in the file, for error messages."""

    path: str = ""  # dotted path of the object; "" at the top level
    request: bool = False  # a request label: messages read "<label>: <key> <what>"

    def child(self, key: str) -> "_At":
        """The location of the object under `key`."""
        return _At(f"{self.path}.{key}" if self.path else key)

    def error(self, key: str, what: str) -> ScenarioError:
        """An error about `key` of this object; `what` reads "must be ...", "is ..."."""
        if self.request:
            return ScenarioError(f"{self.path}: {key} {what}")
        return ScenarioError(f"{self.path}.{key}: {what}" if self.path else f"{key}: {what}")


def _show(value: object) -> str:
    """A short single-line rendering of a value, in JSON spelling where possible."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(key: object) -> str:
    """A key as it appears in a path: bare when it is a plain name, else quoted."""
    return key if isinstance(key, str) and _PLAIN_KEY.match(key) else _show(key)


def _choices(values: Sequence[str]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def _check_keys(obj: Dict[str, Any], allowed: Sequence[str], at: _At) -> None:
    """Reject the first key of `obj` that is not in `allowed`."""
    for key in obj:
        if key not in allowed:
            raise at.error(_key_text(key), f"is not a known key (allowed: {', '.join(allowed)})")


def _absent(key: str, at: _At, default: Any) -> Any:
    """The value of a missing key: its default, or an error when it is required."""
    if default is _REQUIRED:
        raise at.error(key, "is required")
    return default


def _check_int(value: object, at: _At, key: str, min_value: int, max_value: int,
               nullable: bool = False) -> int:
    """`value` itself as a checked int (bool and float are rejected)."""
    if type(value) is not int:
        kind = "an int or null" if nullable else "an int"
        raise at.error(key, f"must be {kind}, got {_show(value)}")
    if value < min_value:
        kinds = {0: "a non-negative int", 1: "a positive int"}
        kind = kinds.get(min_value, f"an int >= {min_value}")
        raise at.error(key, f"must be {kind}, got {_show(value)}")
    if value > max_value:
        raise at.error(key, f"must be at most {max_value}, got {_show(value)}")
    return value


def _int(obj: Dict[str, Any], key: str, at: _At, *, min_value: int = 1,
         max_value: int = MAX_INT32, default: Any = _REQUIRED, nullable: bool = False) -> Any:
    """The int under `key` (None only when `nullable` or defaulted to None)."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if value is None and nullable:
        return None
    return _check_int(value, at, key, min_value, max_value, nullable)


def _bool(obj: Dict[str, Any], key: str, at: _At, default: Any = _REQUIRED) -> bool:
    """The boolean under `key`."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if type(value) is not bool:
        raise at.error(key, f"must be true or false, got {_show(value)}")
    return value


def _str(obj: Dict[str, Any], key: str, at: _At, default: Any = _REQUIRED) -> str:
    """The string under `key`."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if type(value) is not str:
        raise at.error(key, f"must be a string, got {_show(value)}")
    return value


def _choice(obj: Dict[str, Any], key: str, at: _At, choices: Sequence[str],
            default: Any = _REQUIRED) -> str:
    """The string under `key`, which must be one of `choices`."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if type(value) is not str or value not in choices:
        raise at.error(key, f"must be one of {_choices(choices)}, got {_show(value)}")
    return value


def _object(obj: Dict[str, Any], key: str, at: _At, *, nullable: bool = False,
            default: Any = _REQUIRED) -> Optional[Dict[str, Any]]:
    """The JSON object under `key` (None only when `nullable` or defaulted to None)."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        kind = "an object or null" if nullable else "an object"
        raise at.error(key, f"must be {kind}, got {_show(value)}")
    return value


def _list(obj: Dict[str, Any], key: str, at: _At, default: Any = _REQUIRED) -> Sequence[Any]:
    """The JSON array under `key`."""
    if key not in obj:
        return _absent(key, at, default)
    value = obj[key]
    if not isinstance(value, (list, tuple)):
        raise at.error(key, f"must be a list, got {_show(value)}")
    return value


def _priority(obj: Dict[str, Any], at: _At) -> float:
    """`priority`: an int or float in [0, 1] (not a boolean), as a float."""
    value = obj.get("priority", 0.5)
    if type(value) not in (int, float):
        raise at.error("priority", f"must be a number in [0, 1], got {_show(value)}")
    if not 0 <= value <= 1:  # also rejects NaN
        raise at.error("priority", f"must be in [0, 1], got {_show(value)}")
    return float(value)


# --------------------------------------------------------------------------- sections


def _section(obj: Dict[str, Any], key: str, at: _At,
             parse: Callable[[Dict[str, Any], _At], Any]) -> Any:
    """An optional object-or-null section, parsed by `parse` (None when absent or null)."""
    body = _object(obj, key, at, nullable=True, default=None)
    return None if body is None else parse(body, at.child(key))


def _parse_kv_cache(obj: Dict[str, Any], at: _At) -> KvCacheConfig:
    _check_keys(obj, _KV_KEYS, at)
    return KvCacheConfig(
        tokens_per_block=_int(obj, "tokens_per_block", at),
        num_blocks=_int(obj, "num_blocks", at),
        max_seq_len=_int(obj, "max_seq_len", at),
        enable_block_reuse=_bool(obj, "enable_block_reuse", at, False),
        enable_partial_reuse=_bool(obj, "enable_partial_reuse", at, True),
        copy_on_partial_reuse=_bool(obj, "copy_on_partial_reuse", at, True),
        num_secondary_blocks=_int(obj, "num_secondary_blocks", at, min_value=0, default=0),
    )


def _parse_cross_kv_cache(obj: Dict[str, Any], at: _At) -> KvCacheConfig:
    cache = _parse_kv_cache(obj, at)
    if cache.enable_block_reuse:
        raise at.error("enable_block_reuse", "must be false on the cross cache "
                       "(no encoder tokens are modelled), got true")
    return cache


def _parse_peft(obj: Dict[str, Any], at: _At) -> PeftConfig:
    _check_keys(obj, _PEFT_KEYS, at)
    return PeftConfig(
        pages_per_task=_int(obj, "pages_per_task", at),
        max_device_pages=_int(obj, "max_device_pages", at),
    )


def _parse_chunking(obj: Dict[str, Any], at: _At) -> ChunkingConfig:
    _check_keys(obj, _CHUNKING_KEYS, at)
    return ChunkingConfig(
        policy=_choice(obj, "policy", at, CHUNKING_POLICIES),
        unit_size=_int(obj, "unit_size", at),
    )


def _parse_scheduler(obj: Dict[str, Any], at: _At) -> SchedulerConfig:
    _check_keys(obj, _SCHEDULER_KEYS, at)
    policy = _choice(obj, "policy", at, POLICIES)
    max_num_requests = _int(obj, "max_num_requests", at)
    waiting = None
    if obj.get("waiting_queue_policy") is not None:
        waiting = _choice(obj, "waiting_queue_policy", at, WAITING_QUEUE_POLICIES)
    max_active = _int(obj, "max_num_active_requests", at, default=None, nullable=True)
    if max_active is not None and waiting is None:
        raise at.error("max_num_active_requests", "needs waiting_queue_policy (without a waiting queue every "
                       "arrival joins the active list)")
    return SchedulerConfig(
        policy=policy,
        max_num_requests=max_num_requests,
        max_batch_size=_int(obj, "max_batch_size", at, default=max_num_requests),
        max_num_tokens=_int(obj, "max_num_tokens", at, default=None, nullable=True),
        max_context_length=_int(obj, "max_context_length", at, default=None, nullable=True),
        chunking=_section(obj, "chunking", at, _parse_chunking),
        two_steps_look_ahead=_bool(obj, "two_steps_look_ahead", at, False),
        fused=_bool(obj, "fused", at, False),
        waiting_queue_policy=waiting,
        max_num_active_requests=max_active,
    )


def _check_scheduler_rules(sched: SchedulerConfig, harness: str,
                           kv: Optional[KvCacheConfig]) -> None:
    """The rules tying the scheduler to the harness and to the self cache."""
    if harness == "chunking" and sched.chunking is None:
        raise _At("scheduler").error("chunking", 'is required when harness is "chunking"')
    if sched.fused and harness != "full":
        raise _At("scheduler").error("fused", f'needs harness "full" (one pass has no stage to run alone), '
                                     f'got harness {json.dumps(harness)}')
    if sched.waiting_queue_policy is not None and harness == "chunking":
        raise _At("scheduler").error("waiting_queue_policy", 'must be null with harness "chunking" '
                                     '(it schedules no active list)')
    if kv is not None and kv.enable_block_reuse and sched.chunking is not None:
        unit = sched.chunking.unit_size
        if unit % kv.tokens_per_block:
            raise _At("scheduler.chunking").error(
                "unit_size", f"must be a multiple of kv_cache.tokens_per_block "
                f"({kv.tokens_per_block}) when kv_cache.enable_block_reuse is true, got {unit}")


# --------------------------------------------------------------------------- requests


MAX_REQUEST_TOKENS = _core.MAX_REQUEST_TOKENS  # prompt + max new tokens of one request (RequestTable's limit)


def _parse_prompt(obj: Dict[str, Any], at: _At) -> Tuple[int, ...]:
    """Exactly one of `prompt` (token ids) and `prompt_len` (that many 1s)."""
    has_prompt, has_len = "prompt" in obj, "prompt_len" in obj
    if has_prompt and has_len:
        raise at.error("prompt", "and prompt_len are both given; give exactly one")
    if not has_prompt and not has_len:
        raise at.error("prompt", "or prompt_len is required (exactly one of them)")
    if has_len:
        # tllm_sched's per-request limit (ext/request_table.h kMaxRequestTokens): a longer prompt
        # could never be held, and expanding it here would take gigabytes.
        return (1,) * _int(obj, "prompt_len", at, max_value=MAX_REQUEST_TOKENS)
    tokens = _list(obj, "prompt", at)
    if not tokens:
        raise at.error("prompt", "must not be empty")
    if len(tokens) > MAX_REQUEST_TOKENS:  # before looking at any token
        raise at.error("prompt", f"is too long: {len(tokens)} tokens, more than the limit of "
                       f"{MAX_REQUEST_TOKENS} tokens per request")
    return tuple(_check_int(token, at, f"prompt[{j}]", 0, MAX_INT32)
                 for j, token in enumerate(tokens))


def _check_fits(at: _At, key: str, what: str, tokens: int, cache: KvCacheConfig,
                cache_name: str) -> None:
    """The two size rules: `tokens` within max_seq_len and within the block pool."""
    if tokens > cache.max_seq_len:
        raise at.error(key, f"is too large: {what} = {tokens} exceeds "
                       f"{cache_name}.max_seq_len {cache.max_seq_len}")
    blocks = -(-tokens // cache.tokens_per_block)
    if blocks > cache.num_blocks:
        raise at.error(key, f"is too large: {what} = {tokens} tokens need {blocks} blocks of "
                       f"{cache.tokens_per_block}, more than {cache_name}.num_blocks "
                       f"{cache.num_blocks} (the request could never run)")


def _check_request_rules(req: RequestSpec, at: _At, kv: Optional[KvCacheConfig],
                         cross: Optional[KvCacheConfig]) -> None:
    """The rules tying a request to the caches."""
    if kv is not None:
        what = f"prompt length {req.prompt_len} + max_new_tokens {req.max_new_tokens}"
        total = req.prompt_len + req.max_new_tokens
        _check_fits(at, "max_new_tokens", what, total, kv, "kv_cache")
    if cross is not None:
        if req.encoder_output_len is None:
            raise at.error("encoder_output_len", "is required when cross_kv_cache is set")
        what = "encoder_output_len"
        _check_fits(at, what, what, req.encoder_output_len, cross, "cross_kv_cache")
    if req.beam_width > 1 and (kv is not None or cross is not None):
        raise at.error("beam_width", f"must be 1 with a KV cache (kv_cache or cross_kv_cache "
                       f"set), got {req.beam_width}")
    chunk = req.context_chunk_size
    if kv is not None and kv.enable_block_reuse and chunk is not None:
        if chunk % kv.tokens_per_block:
            raise at.error("context_chunk_size", f"must be a multiple of "
                           f"kv_cache.tokens_per_block ({kv.tokens_per_block}) when block reuse "
                           f"is on, got {chunk}")


def _parse_request(item: object, index: int, kv: Optional[KvCacheConfig],
                   cross: Optional[KvCacheConfig]) -> RequestSpec:
    label = f"requests[{index}]"
    if not isinstance(item, dict):
        raise _At().error(label, f"must be an object, got {_show(item)}")
    req_id = _int(item, "id", _At(label, request=True), min_value=0, max_value=MAX_INT64)
    at = _At(f"{label} (id {req_id})", request=True)
    _check_keys(item, _REQUEST_KEYS, at)
    req = RequestSpec(
        id=req_id,
        prompt=_parse_prompt(item, at),
        max_new_tokens=_int(item, "max_new_tokens", at),
        arrive_at=_int(item, "arrive_at", at, min_value=0, default=0),
        priority=_priority(item, at),
        lora_task_id=_int(item, "lora_task_id", at, min_value=0, max_value=MAX_INT64,
                          default=None, nullable=True),
        beam_width=_int(item, "beam_width", at, default=1),
        draft_tokens=_int(item, "draft_tokens", at, min_value=0, default=0),
        encoder_output_len=_int(item, "encoder_output_len", at, default=None, nullable=True),
        state=_choice(item, "state", at, REQUEST_STATES, "CONTEXT_INIT"),
        context_chunk_size=_int(item, "context_chunk_size", at, default=None, nullable=True),
    )
    _check_request_rules(req, at, kv, cross)
    return req


def _parse_requests(obj: Dict[str, Any], kv: Optional[KvCacheConfig],
                    cross: Optional[KvCacheConfig]) -> Tuple[RequestSpec, ...]:
    requests = []
    first_index: Dict[int, int] = {}  # request id -> index of its first occurrence
    for index, item in enumerate(_list(obj, "requests", _At())):
        req = _parse_request(item, index, kv, cross)
        if req.id in first_index:
            at = _At(f"requests[{index}] (id {req.id})", request=True)
            raise at.error("id", f"duplicates the id of requests[{first_index[req.id]}]")
        first_index[req.id] = index
        requests.append(req)
    return tuple(requests)


# --------------------------------------------------------------------------- events


def _parse_event(item: object, index: int, requests: Dict[int, RequestSpec]) -> Event:
    label = f"events[{index}]"
    if not isinstance(item, dict):
        raise _At().error(label, f"must be an object, got {_show(item)}")
    at = _At(label)
    _check_keys(item, _EVENT_KEYS, at)
    when = _int(item, "at", at, min_value=0)
    body = _object(item, "set_draft_tokens", at)
    body_at = at.child("set_draft_tokens")
    _check_keys(body, _DRAFT_KEYS, body_at)
    ids = _list(body, "ids", body_at)
    if not ids:
        raise body_at.error("ids", "must name at least one request, got []")
    for j, req_id in enumerate(ids):
        _check_int(req_id, body_at, f"ids[{j}]", 0, MAX_INT64)
        if req_id not in requests:
            raise body_at.error(f"ids[{j}]", f"names no request: no request has id {req_id}")
    count = _int(body, "count", body_at, min_value=0)
    for req_id in ids:  # LlmRequest.set_num_draft_tokens's limit, checked before the run
        r = requests[req_id]
        reserved = r.prompt_len + r.max_new_tokens + r.draft_tokens
        if count > reserved:
            raise body_at.error("count", f"is too large: {count} draft tokens exceed the reserved token storage "
                                f"of request {req_id} (prompt length {r.prompt_len} + max_new_tokens "
                                f"{r.max_new_tokens} + draft_tokens {r.draft_tokens} = {reserved})")
    return Event(at=when, ids=tuple(ids), count=count)


def _parse_events(obj: Dict[str, Any], requests: Sequence[RequestSpec]) -> Tuple[Event, ...]:
    by_id = {req.id: req for req in requests}
    items = _list(obj, "events", _At(), [])
    return tuple(_parse_event(item, index, by_id) for index, item in enumerate(items))


# --------------------------------------------------------------------------- entry points


def parse_scenario(obj: object) -> Scenario:
    """Validate a decoded JSON value as a tllm_sched.scenario/1 scenario.

    Raises ScenarioError (one line, naming the key path) for anything the format rejects.
    """
    if not isinstance(obj, dict):
        raise ScenarioError(f"scenario: must be a JSON object, got {_show(obj)}")
    top = _At()
    if "format" not in obj:
        raise top.error("format", f"is required (must be {json.dumps(FORMAT)})")
    if type(obj["format"]) is not str or obj["format"] != FORMAT:
        raise top.error("format", f"must be {json.dumps(FORMAT)}, got {_show(obj['format'])}")
    _check_keys(obj, _TOP_KEYS, top)
    name = _str(obj, "name", top, "")
    harness = _choice(obj, "harness", top, HARNESSES, "full")
    kv = _section(obj, "kv_cache", top, _parse_kv_cache)
    cross = _section(obj, "cross_kv_cache", top, _parse_cross_kv_cache)
    peft = _section(obj, "peft", top, _parse_peft)
    scheduler = _parse_scheduler(_object(obj, "scheduler", top), top.child("scheduler"))
    _check_scheduler_rules(scheduler, harness, kv)
    micro_slots = _int(obj, "micro_slots", top, default=1)
    max_input_len = _int(obj, "max_input_len", top, default=1000)
    max_iterations = _int(obj, "max_iterations", top, default=100000)
    requests = _parse_requests(obj, kv, cross)
    return Scenario(
        format=FORMAT,
        name=name,
        harness=harness,
        kv_cache=kv,
        cross_kv_cache=cross,
        peft=peft,
        scheduler=scheduler,
        micro_slots=micro_slots,
        max_input_len=max_input_len,
        requests=requests,
        events=_parse_events(obj, requests),
        max_iterations=max_iterations,
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: Sequence[Tuple[str, Any]]) -> Dict[str, Any]:
    obj: Dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {_show(key)} in an object")
        obj[key] = value
    return obj


def _decode(text: str, name: str) -> object:
    """Strict JSON: no NaN/Infinity, no key given twice in one object."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                            f"{exc.msg}") from None
    except RecursionError:
        raise ScenarioError(f"{name}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # our hooks, or an integer too long to convert
        raise ScenarioError(f"{name}: invalid JSON: {exc}") from None


def load_scenario(path: "str | os.PathLike[str]") -> Scenario:
    """Read, decode and validate a scenario file.

    Every ScenarioError it raises starts with the file name: unreadable files,
    non-UTF-8 text and JSON syntax errors as well as validation errors.
    """
    name = os.fsdecode(path)
    try:
        with open_input(path, SCENARIO_MAX_BYTES, "scenario file") as handle:
            raw = handle.read(SCENARIO_MAX_BYTES + 1)
    except FileProblem as exc:
        raise ScenarioError(str(exc)) from None
    except OSError as exc:
        raise ScenarioError(f"{name}: cannot read scenario file: {exc.strerror or exc}") from None
    if len(raw) > SCENARIO_MAX_BYTES:  # it grew after the size check
        raise ScenarioError(f"{name}: the scenario file is over the limit of {SCENARIO_MAX_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    obj = _decode(text, name)
    try:
        return parse_scenario(obj)
    except ScenarioError as exc:
        raise ScenarioError(f"{name}: {exc}") from None
