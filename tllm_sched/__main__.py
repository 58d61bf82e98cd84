"""tllm_sched/__main__.py: the command line (`python -m tllm_sched` / `tllm-sched`).

    tllm-sched replay SCENARIO.json [--backend cpp|python|python-naive] [--out FILE]
    tllm-sched bench [options]            (see `tllm-sched bench --help`)
    tllm-sched gate record|check BASELINE.json [options]   (see `tllm-sched gate --help`)

Exit status: 0 success, 1 a regression (bench --compare, gate check), 2 invalid input (one-line
message, no traceback), 3 a run that started but could not go on.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _replay(args: argparse.Namespace) -> int:
    from tllm_sched.replay import RunFailure, replay
    from tllm_sched.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"tllm-sched replay: {e}", file=sys.stderr)
        return 2
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        replay(sc, args.backend, out)
    except ScenarioError as e:  # sizes the run cannot hold, found while building it
        print(f"tllm-sched replay: {e}", file=sys.stderr)
        return 2
    except RunFailure as e:
        out.flush()
        print(f"tllm-sched replay: run failed: {e}", file=sys.stderr)
        return 3
    finally:
        if args.out:
            out.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from tllm_sched.scheduler import BACKENDS

    parser = argparse.ArgumentParser(prog="tllm-sched", description="Host-side LLM batch scheduler tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a tllm_sched.scenario/1 file and print its decision log")
    rp.add_argument("scenario", help="scenario JSON file")
    rp.add_argument("--backend", choices=BACKENDS, default="cpp", help="scheduler backend (default: cpp)")
    rp.add_argument("--out", help="write the log here instead of standard output")
    rp.set_defaults(func=_replay)
    bp = sub.add_parser("bench", help="measure scheduler host overhead (see bench --help)", add_help=False)
    bp.set_defaults(func=None)
    gp = sub.add_parser("gate", help="record or check a CI performance baseline (see gate --help)", add_help=False)
    gp.set_defaults(func=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from tllm_sched.bench import main as bench_main

        return bench_main(rest)
    if args.command == "gate":
        from tllm_sched.gate import main as gate_main

        return gate_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


def _run() -> int:
    try:
        return main()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(_run())
