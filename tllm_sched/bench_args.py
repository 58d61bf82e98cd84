"""tllm_sched/bench_args.py: what the `tllm-sched bench` command lines share (the synthetic grid,
traces, the sweep in bench.py and the attention-DP runs in bench_dp.py): option parsers, the
usage error and the progress bar."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional

from tllm_sched import bench_workloads as wl
from tllm_sched.config import INT32_MAX
from tllm_sched.registry import CAPACITY_POLICIES

PROG = "tllm-sched bench"
ALIASES = {a: p.name for p in CAPACITY_POLICIES.values() if p.name in wl.POLICIES for a in (p.short, *p.aliases)}
MAX_STEPS = 10_000_000  # --steps, --warmup, --max-steps: every step is recorded (days of CPU at this count)
MAX_SEED = 2**63 - 1


class UsageError(ValueError):
    """Invalid input (exit status 2)."""


def _list(kind: str, choices=None, convert=str, most: Optional[int] = None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        out = []
        for t in items:
            if kind == "policy":
                t = ALIASES.get(t.upper(), t.upper())
            try:
                v = convert(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad {kind} {t!r}") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"unknown {kind} {t!r} (choose from {', '.join(map(str, choices))})")
            if convert is int and v <= 0:
                raise argparse.ArgumentTypeError(f"{kind} must be positive, got {v}")
            if most is not None and v > most:
                raise argparse.ArgumentTypeError(f"{kind} must be at most {most:,}, got {v}")
            out.append(v)
        return list(dict.fromkeys(out))
    return parse


def _int_in(least: int, most: int):
    """An argparse type: an int in [least, most]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"must be {'positive' if least == 1 else f'>= {least}'}, got {v}")
        if v > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,}, got {v}")
        return v
    return parse


def _milliseconds(text: str) -> float:
    """An argparse type: a finite time >= 0 in ms."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of ms >= 0, got {text}")
    return v


_count = _int_in(0, INT32_MAX)
_positive = _int_in(1, INT32_MAX)
_steps = _int_in(1, MAX_STEPS)


def _progress(args, total: Optional[int], unit: str):
    """(update callback, close callback): a tqdm bar on a terminal, silence otherwise."""
    if args.no_progress or not sys.stderr.isatty():
        return wl._noop, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return wl._noop, lambda: None
    bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    return bar.update, bar.close
