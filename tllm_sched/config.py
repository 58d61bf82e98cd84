"""tllm_sched/config.py: configuration of caches and schedulers (one home for both the scenario
loader and the schedulers).

Each configuration is validated once, where it is built (`__post_init__`), so every backend sees
the same accepted values and refuses the same bad ones with the same message: sizes are ints
(a bool is not an int) within int32 and positive unless said otherwise, names come from the
registries. A wrong type is a TypeError, a wrong value a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES, WAITING_QUEUE_POLICIES

__all__ = ["KvCacheConfig", "PeftConfig", "ChunkingConfig", "SchedulerConfig", "INT32_MAX"]

INT32_MAX = 2**31 - 1  # the C++ core takes every size as an int32


def _check_int(owner: object, name: str, value: object, *, min_value: int = 1, optional: bool = False) -> None:
    """`value` is an int in [min_value, INT32_MAX] (or None when `optional`)."""
    if value is None and optional:
        return
    what = f"{type(owner).__name__}.{name}"
    kind = {0: "a non-negative int", 1: "a positive int"}[min_value] + (" or None" if optional else "")
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be {kind}, got {type(value).__name__} {value!r}")
    if value < min_value:
        raise ValueError(f"{what} must be {kind}, got {value}")
    if value > INT32_MAX:
        raise ValueError(f"{what} must be at most {INT32_MAX}, got {value}")


def _check_bool(owner: object, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{type(owner).__name__}.{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_name(owner: object, name: str, value: object, choices, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{type(owner).__name__}.{name} must be a str, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")


@dataclass(frozen=True)
class KvCacheConfig:
    """A KV cache (`kv_cache` or `cross_kv_cache`)."""

    tokens_per_block: int  # tokens held by one block
    num_blocks: int  # primary (device) blocks
    max_seq_len: int  # longest sequence; also the single attention window
    enable_block_reuse: bool = False  # keep finished blocks in the reuse tree
    enable_partial_reuse: bool = True  # allow reuse of a partially matching block
    copy_on_partial_reuse: bool = True  # copy (not take over) a partially reused block
    num_secondary_blocks: int = 0  # secondary (host) blocks; 0 means no secondary pool

    def __post_init__(self) -> None:
        for name in ("tokens_per_block", "num_blocks", "max_seq_len"):
            _check_int(self, name, getattr(self, name))
        _check_int(self, "num_secondary_blocks", self.num_secondary_blocks, min_value=0)
        for name in ("enable_block_reuse", "enable_partial_reuse", "copy_on_partial_reuse"):
            _check_bool(self, name, getattr(self, name))


@dataclass(frozen=True)
class PeftConfig:
    """The PEFT (LoRA) page cache."""

    pages_per_task: int  # pages needed by each distinct LoRA task in one scheduling call
    max_device_pages: int  # pages available on the device

    def __post_init__(self) -> None:
        _check_int(self, "pages_per_task", self.pages_per_task)
        _check_int(self, "max_device_pages", self.max_device_pages)


@dataclass(frozen=True)
class ChunkingConfig:
    """Context chunking (`scheduler.chunking`)."""

    policy: str  # a name of registry.CHUNKING_POLICIES
    unit_size: int  # chunk sizes are multiples of this

    def __post_init__(self) -> None:
        _check_name(self, "policy", self.policy, CHUNKING_POLICIES, "context chunking policy")
        _check_int(self, "unit_size", self.unit_size)


@dataclass(frozen=True)
class SchedulerConfig:
    """The capacity and micro-batch schedulers (`scheduler`)."""

    policy: str  # a name of registry.CAPACITY_POLICIES
    max_num_requests: int  # capacity scheduler: most requests in flight
    max_batch_size: Optional[int] = None  # micro-batch size limit; None becomes max_num_requests
    max_num_tokens: Optional[int] = None  # micro-batch token budget; None means unlimited
    max_context_length: Optional[int] = None  # longest context chunk; None means unlimited
    chunking: Optional[ChunkingConfig] = None  # None: contexts are never chunked
    two_steps_look_ahead: bool = False  # reserve for two decoding steps when chunking
    fused: bool = False  # one pass, the token budget inside the capacity loop (design.md, "The fused mode")
    waiting_queue_policy: Optional[str] = None  # a name of waiting_queue.POLICIES; None: no waiting queue
    max_num_active_requests: Optional[int] = None  # with a waiting queue; None becomes max_num_requests

    def __post_init__(self) -> None:
        _check_name(self, "policy", self.policy, tuple(CAPACITY_POLICIES), "capacity scheduler policy")
        _check_int(self, "max_num_requests", self.max_num_requests)
        if self.max_batch_size is None:
            object.__setattr__(self, "max_batch_size", self.max_num_requests)
        _check_int(self, "max_batch_size", self.max_batch_size)
        _check_int(self, "max_num_tokens", self.max_num_tokens, optional=True)
        _check_int(self, "max_context_length", self.max_context_length, optional=True)
        if self.chunking is not None and not isinstance(self.chunking, ChunkingConfig):
            raise TypeError(f"SchedulerConfig.chunking must be a ChunkingConfig or None, got "
                            f"{type(self.chunking).__name__}")
        _check_bool(self, "two_steps_look_ahead", self.two_steps_look_ahead)
        _check_bool(self, "fused", self.fused)
        if self.waiting_queue_policy is not None:
            _check_name(self, "waiting_queue_policy", self.waiting_queue_policy, WAITING_QUEUE_POLICIES,
                        "waiting queue policy")
        if self.max_num_active_requests is None:
            object.__setattr__(self, "max_num_active_requests", self.max_num_requests)
        _check_int(self, "max_num_active_requests", self.max_num_active_requests)
