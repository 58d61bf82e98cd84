"""tllm_sched/config.py: configuration of caches and schedulers (one home for both the scenario
loader and the schedulers)."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional

from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES

__all__ = ["KvCacheConfig", "PeftConfig", "ChunkingConfig", "SchedulerConfig"]


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


@dataclass(frozen=True)
class PeftConfig:
    """The PEFT (LoRA) page cache."""

    pages_per_task: int  # pages needed by each distinct LoRA task in one scheduling call
    max_device_pages: int  # pages available on the device


@dataclass(frozen=True)
class ChunkingConfig:
    """Context chunking (`scheduler.chunking`)."""

    policy: str  # a name of registry.CHUNKING_POLICIES
    unit_size: int  # chunk sizes are multiples of this

    def __post_init__(self) -> None:
        _check_name("chunking policy", self.policy, CHUNKING_POLICIES)
        _check_positive("unit_size", self.unit_size)


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

    def __post_init__(self) -> None:
        _check_name("capacity scheduler policy", self.policy, CAPACITY_POLICIES)
        _check_positive("max_num_requests", self.max_num_requests)
        if self.max_batch_size is None:
            object.__setattr__(self, "max_batch_size", self.max_num_requests)
        _check_positive("max_batch_size", self.max_batch_size)
        for name in ("max_num_tokens", "max_context_length"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name), "or None")
        if self.chunking is not None and not isinstance(self.chunking, ChunkingConfig):
            raise TypeError(f"chunking: expected a ChunkingConfig or None, got {type(self.chunking).__name__}")


def _check_name(what: str, name, names) -> None:
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(names)}")


def _check_positive(name: str, value, alternative: str = "") -> None:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int{' ' + alternative if alternative else ''}, "
                        f"got {type(value).__name__}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive{' ' + alternative if alternative else ''}, got {value}")
