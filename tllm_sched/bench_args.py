"""tllm_sched/bench_args.py: what the `tllm-sched bench` command lines share (the synthetic grid,
traces, the sweep in bench.py and the attention-DP runs in bench_dp.py): option parsers, the
usage error and the progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from tllm_sched import bench_workloads as wl
from tllm_sched.registry import CAPACITY_POLICIES

PROG = "tllm-sched bench"
ALIASES = {a: p.name for p in CAPACITY_POLICIES.values() if p.name in wl.POLICIES for a in (p.short, *p.aliases)}


class UsageError(ValueError):
    """Invalid input (exit status 2)."""


def _list(kind: str, choices=None, convert=str):
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
            out.append(v)
        return list(dict.fromkeys(out))
    return parse


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


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
