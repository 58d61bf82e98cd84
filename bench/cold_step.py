"""bench/cold_step.py: what one scheduling step costs each backend on cold caches, deterministically.

    python bench/cold_step.py [--trace FILE] [--policy GNE|MU] [--limit 300] [--after 300] [--contexts 2]
                              [--repeats 12] [--top 25] [--keep DIR]

The p99 of a trace run is made of cold steps: an arrival or a finished prefill lets the executor
touch megabytes between two scheduling calls, and the next call pays for every cache line it
touches again. Thread CPU time shows it (about 4x the warm cost on this machine) but is too noisy
to compare two versions of a function. This tool measures it under valgrind's cache simulator:
it replays the first `--limit` requests of a Mooncake trace on the cpp and python backends (reuse
on), stops after `--after` steps at a state whose next step schedules exactly `--contexts`
contexts, then repeats: evict (write 16 MiB), schedule once on each backend (not executed, so the
state stays put). Each call is cut out by os.getppid() markers (callgrind's --dump-before) and
costed as Ir + 14 x L1 misses + 60 x L2 misses, with a 2 MiB last level standing in for this
machine's L2. The same code and state give the same count on every run (PYTHONHASHSEED is fixed);
a change of layout moves it by about 1%.

Prints the estimated cycles per step of each backend, their ratio, and (--top) the functions
that cost the python step most, self cost, with their shared objects. Needs valgrind; run it on the
real interpreter (`python`, not a wrapper script). A few minutes: valgrind runs ~50x slower.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MARKER = "getppid"
POLICIES = {"GNE": "GUARANTEED_NO_EVICT", "MU": "MAX_UTILIZATION"}
EVENTS = "Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw".split()
WEIGHT = np.array([1, 0, 0, 14, 14, 14, 60, 60, 60])  # Ir, L1 misses ~14 cycles, L2 misses ~60
CACHES = ["--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64"]
DEFAULT_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mooncake_conversation_trace.jsonl"


def child(trace: str, policy: str, limit: int, after: int, contexts: int, repeats: int, labels_path: str) -> None:
    """Runs under valgrind: replay, freeze, then evict / mark / schedule / mark, per backend."""
    from tllm_sched import bench_workloads as bw
    from tllm_sched.traces import load_trace

    tr = load_trace(trace, limit=limit)
    opt = bw.TraceOptions(policy=policy)
    engine = bw.trace_engine(tr, opt)
    backends = ("cpp", "python")
    prompts = bw._PromptCache(tr, len(backends))
    states = [bw._TraceState(tr, b, opt, engine, prompts) for b in backends]
    steps, out = 0, None
    while not states[0].finished:
        for st in states:
            st.step(count=False)
        steps += 1
        if steps > after:
            out = states[1].sim.scheduler.schedule(states[1].sim.active)  # not executed: changes nothing
            if out.context.size == contexts:
                break
    else:
        sys.exit(f"cold_step: no step after {after} schedules {contexts} contexts in the first {limit} requests")
    sims = [st.sim for st in states]
    print(f"state: step {steps}, {len(sims[1].active)} listed, {out.fitting.size} fitting, {out.context.size} "
          f"contexts scheduled", file=sys.stderr)
    junk = np.zeros(16 << 20, dtype=np.uint8)
    labels = []
    for _ in range(repeats):
        for sim in sims:
            junk[::64] += 1  # every line of 16 MiB: the caches hold nothing of the scheduler
            os.getppid()
            labels.append(sim.backend)
            sim.scheduler.schedule(sim.active)
            os.getppid()
            labels.append("-")
    Path(labels_path).write_text("\n".join(labels))


def _dumps(d: Path) -> dict:
    return {int(f.name.rsplit(".", 1)[1]): f for f in d.glob("cg.out.*") if f.name.rsplit(".", 1)[1].isdigit()}


def _summary(f: Path) -> np.ndarray:
    for line in open(f):
        if line.startswith("summary:"):
            v = [int(x) for x in line.split()[1:]]
            return np.array(v + [0] * (len(EVENTS) - len(v)), dtype=np.int64)
    raise SystemExit(f"cold_step: no summary in {f}")


def _segments(d: Path) -> dict:
    """{backend: [dump file of each of its calls]}: the k-th marker's dump is cg.out.k; the segment
    after the j-th marker (0-based) of the measured loop is the dump numbered first + j + 1."""
    labels = (d / "labels.txt").read_text().split("\n")
    dumps = _dumps(d)
    first = max(dumps) - len(labels)  # the loop's markers are the last len(labels) of them
    seg = collections.defaultdict(list)
    for j, lab in enumerate(labels):
        if lab != "-" and first + j + 2 in dumps:
            seg[lab].append(dumps[first + j + 2])
    return seg


def _self_costs(files) -> collections.Counter:
    """Self cost (estimated cycles) per (function, object) over `files`; names are compressed
    across dumps, so every dump is read for them first."""
    names, objs = {}, {}
    for f in sorted(files[0].parent.glob("cg.out.*")):
        for line in open(f):
            m = re.match(r"c?(fn|ob)=\((\d+)\) (.*)", line)
            if m:
                (names if m.group(1) == "fn" else objs)[m.group(2)] = m.group(3).rsplit("/", 1)[-1]
    acc = collections.Counter()
    for f in files:
        fn = ob = None
        after_calls = False
        for line in open(f):
            if line.startswith(("fn=", "ob=")):
                m = re.match(r"(fn|ob)=\((\d+)\)", line)
                if line.startswith("fn="):
                    fn = names.get(m.group(2), m.group(2))
                else:
                    ob = objs.get(m.group(2), m.group(2))
            elif line.startswith("calls="):
                after_calls = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                v = [int(x) for x in line.split()[1:]]
                acc[(fn, ob)] += int(np.dot(WEIGHT[:len(v)], v))
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE), help="a Mooncake JSONL trace (default: ../shared/data's)")
    ap.add_argument("--policy", choices=sorted(POLICIES), default="GNE", help="capacity policy (default GNE)")
    ap.add_argument("--limit", type=int, default=300, help="requests replayed (default 300)")
    ap.add_argument("--after", type=int, default=300, help="steps replayed before a state is chosen (default 300)")
    ap.add_argument("--contexts", type=int, default=2, help="contexts the chosen step schedules (default 2)")
    ap.add_argument("--repeats", type=int, default=12, help="cold calls per backend (default 12)")
    ap.add_argument("--top", type=int, default=25, help="functions listed for the python step (default 25)")
    ap.add_argument("--keep", help="keep callgrind's dumps in this folder (default: a temporary one)")
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.trace, POLICIES[a.policy], a.limit, a.after, a.contexts, a.repeats, a.child[0])
        return 0
    for name in ("limit", "after", "contexts", "repeats"):
        if getattr(a, name) < (0 if name in ("after", "contexts") else 1):
            print(f"cold_step: --{name} must be positive", file=sys.stderr)
            return 2
    if not Path(a.trace).is_file():
        print(f"cold_step: no trace at {a.trace}", file=sys.stderr)
        return 2
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        print("cold_step: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("cg.out*"):
            old.unlink()
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", *CACHES, f"--dump-before={MARKER}",
               "--dump-line=no", f"--callgrind-out-file={d / 'cg.out'}", sys.executable, __file__,
               "--trace", a.trace, "--policy", a.policy, "--limit", str(a.limit), "--after", str(a.after), "--contexts", str(a.contexts),
               "--repeats", str(a.repeats), "--child", str(d / "labels.txt")]
        run = subprocess.run(cmd, env={**os.environ, "PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        state = [line for line in run.stderr.splitlines() if line.startswith(("state:", "cold_step:"))]
        if run.returncode != 0 or not (d / "labels.txt").exists():
            print(state[-1] if state else f"cold_step: the valgrind run failed (exit {run.returncode})", file=sys.stderr)
            return 2
        print(state[0])
        seg = _segments(d)
        cost = {}
        for b in ("cpp", "python"):
            rows = np.array([_summary(f) for f in seg[b]])
            c = rows @ WEIGHT
            cost[b] = float(np.median(c))
            l1, l2 = rows[:, 3:6].sum(1), rows[:, 6:9].sum(1)
            print(f"{b:7s} {len(c)} cold calls: median {np.median(c):10,.0f} est. cycles  (instructions "
                  f"{np.median(rows[:, 0]):,.0f}, L1 misses {np.median(l1):,.0f}, L2 misses {np.median(l2):,.0f})")
        print(f"python / cpp: {cost['python'] / cost['cpp']:.2f}")
        if a.top:
            acc = _self_costs(seg["python"])
            n = len(seg["python"])
            print(f"\npython step, self cost per call (est. cycles), top {a.top}:")
            for (fn, ob), v in acc.most_common(a.top):
                print(f"{v / n:9,.0f}  {fn}  [{ob}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
