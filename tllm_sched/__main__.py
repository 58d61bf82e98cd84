"""tllm_sched/__main__.py: the command line (`python -m tllm_sched` / `tllm-sched`).

    tllm-sched replay SCENARIO.json [--backend cpp|python|python-naive] [--out FILE]
    tllm-sched bench [options]            (see `tllm-sched bench --help`)
    tllm-sched gate record|check BASELINE.json [options]   (see `tllm-sched gate --help`)

Exit status (tllm_sched/cli.py): 0 success, 1 a regression (gate check), 2 invalid input (one-line
message, no traceback), 3 a run that started but could not go on, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from tllm_sched import cli

PROG = "tllm-sched"


def _fail(prog: str, code: int, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def _replay(args: argparse.Namespace) -> int:
    from tllm_sched.files import AtomicFile, FileProblem, check_output_file
    from tllm_sched.replay import RunFailure, replay
    from tllm_sched.scenario import ScenarioError, load_scenario

    prog = f"{PROG} replay"
    try:
        sc = load_scenario(args.scenario)
        if args.out:
            check_output_file(args.out)  # before the run: a bad path loses no work
        elif sys.stdout is None:
            raise ScenarioError("standard output is closed; give --out FILE")
        sink = AtomicFile(args.out) if args.out else None
    except (ScenarioError, FileProblem) as e:
        return _fail(prog, cli.INVALID, str(e))
    # With --out the log goes to a temporary file, renamed over FILE once the run has ended (exit
    # 0, or 3 with the log up to the failure); refused or interrupted, FILE stays as it was.
    try:
        out = sys.stdout if sink is None else sink.file
        failure = None
        try:
            replay(sc, args.backend, out)
        except ScenarioError as e:  # sizes the run cannot hold, found while building it
            return _fail(prog, cli.INVALID, str(e))
        except RunFailure as e:
            failure = e
        if sink is None:
            out.flush()
        else:
            sink.commit()
    except BrokenPipeError:
        raise  # the reader went away: not an error of ours (_run)
    except OSError as e:  # the log could not be written: a full disk, a closed descriptor
        if sink is None:
            cli.silence_stdout()
        return _fail(prog, cli.RUN_FAILED, f"cannot write the log to {args.out or 'standard output'}: "
                     f"{e.strerror or e}")
    finally:
        if sink is not None:
            sink.discard()  # nothing after a commit
    if failure is not None:
        return _fail(prog, cli.RUN_FAILED, f"run failed: {failure}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from tllm_sched.scheduler import BACKENDS

    parser = cli.ArgumentParser(prog=PROG, description="Host-side LLM batch scheduler tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a tllm_sched.scenario/1 file and print its decision log")
    rp.add_argument("scenario", help="scenario JSON file")
    rp.add_argument("--backend", choices=BACKENDS, default="cpp", help="scheduler backend (default: cpp)")
    rp.add_argument("--out", help="write the log here instead of standard output (replaced only when the run ends)")
    rp.set_defaults(func=_replay)
    bp = sub.add_parser("bench", help="measure scheduler host overhead (see bench --help)", add_help=False)
    bp.set_defaults(func=None)
    gp = sub.add_parser("gate", help="record or check a CI performance baseline (see gate --help)", add_help=False)
    gp.set_defaults(func=None)
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, its one line already printed)
        return int(e.code or 0)
    if args.command == "bench":
        from tllm_sched.bench import main as bench_main

        return bench_main(rest)
    if args.command == "gate":
        from tllm_sched.gate import main as gate_main

        return gate_main(rest)
    if rest:
        return _fail(f"{PROG} {args.command}", cli.INVALID, f"error: unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _fail(f"{PROG} {args.command}", cli.INTERRUPTED, "interrupted")


def _run() -> int:
    try:
        return main()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        cli.silence_stdout()
        return 0
    except KeyboardInterrupt:  # before a command took over (importing, parsing)
        return _fail(PROG, cli.INTERRUPTED, "interrupted")


if __name__ == "__main__":
    sys.exit(_run())
