"""bench/gate_proof.py: evidence that `tllm-sched gate check` neither flakes nor misses.

    python bench/gate_proof.py BASELINE.json [--unchanged 20] [--doctored 10] [--work DIR] [-- CHECK OPTIONS]

BASELINE.json is a baseline recorded on the code being checked (`tllm-sched gate record`), so
every difference the checks see is either noise or a doctoring done here:

  - unchanged: `gate check BASELINE.json` N times; every run must exit 0. Each run's results
    (with per-cell figures) are kept as DIR/unchanged-N.json for a look at the noise.
  - doctored: N runs against copies of the baseline whose time figures (CPU and wall per round,
    p99) are all 30% below today's and whose instruction count is 5% below today's in one cell,
    a different cell each run, over every backend. Each run must exit 1 with an instruction
    regression naming exactly that cell, and at least one time regression ("thread CPU time").

Each check runs as the real command line in a child process. Prints one line per run (exit
status, seconds, what was flagged) and a summary; exits 0 when every run went as it must.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _name(c: dict) -> str:
    return f"{c['workload']}/{c['policy']}/N={c['n_active']}/{c['backend']}"


def _check(baseline: Path, extra: list, work: Path) -> tuple[int, float, list]:
    t0 = time.perf_counter()
    # cwd: the work folder, so that `-m` imports the installed tllm_sched, not a checkout's.
    p = subprocess.run([sys.executable, "-m", "tllm_sched", "gate", "check", str(baseline.resolve()), *extra],
                       capture_output=True, text=True, cwd=work)
    lines = [ln[len("REGRESSION "):] for ln in p.stdout.splitlines() if ln.startswith("REGRESSION ")]
    if p.returncode not in (0, 1):
        lines.append(f"stderr: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
    return p.returncode, time.perf_counter() - t0, lines


def _doctor(doc: dict, cell_index: int) -> dict:
    doc = json.loads(json.dumps(doc))
    for c in doc["cells"]:
        c["cpu_us"] = [v * 0.7 for v in c["cpu_us"]]
        c["wall_us"] = [v * 0.7 for v in c["wall_us"]]
        c["wall_p99_us"] *= 0.7
    target = doc["cells"][cell_index]
    target["instructions_per_step"] = int(target["instructions_per_step"] * 0.95)
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline")
    ap.add_argument("--unchanged", type=int, default=20, help="checks of unchanged code (default 20)")
    ap.add_argument("--doctored", type=int, default=10, help="checks against doctored baselines (default 10)")
    ap.add_argument("--work", default="gate-proof", help="folder for the doctored baselines (default gate-proof/)")
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    doc = json.loads(Path(args.baseline).read_text())
    if any(c["instructions_per_step"] is None for c in doc["cells"]) and args.doctored:
        print("gate_proof: the baseline has no instruction counts; record it with valgrind", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    failures = 0
    for i in range(args.unchanged):
        out = ["--out", str(work / f"unchanged-{i + 1}.json")]
        code, secs, lines = _check(Path(args.baseline), extra + out, work)
        ok = code == 0
        failures += not ok
        print(f"unchanged {i + 1:2d}: exit {code}  {secs:6.1f} s  {'ok' if ok else 'FAILED: ' + '; '.join(lines)}",
              flush=True)
    cells = doc["cells"]
    for i in range(args.doctored):
        k = (i * 7) % len(cells)  # a stride through the cells, so the runs cover every backend
        path = work / f"doctored-{i + 1}.json"
        path.write_text(json.dumps(_doctor(doc, k)))
        code, secs, lines = _check(path, extra, work)
        target = _name(cells[k])
        instr = [ln for ln in lines if "instructions per step" in ln]
        timed = [ln for ln in lines if "thread CPU time per step" in ln]
        ok = code == 1 and len(instr) == 1 and instr[0].startswith(target + ":") and len(timed) >= 1
        failures += not ok
        print(f"doctored  {i + 1:2d}: exit {code}  {secs:6.1f} s  instructions 5% lower in {target}: "
              f"{'caught' if instr and instr[0].startswith(target + ':') else 'MISSED'} ({len(instr)} instruction "
              f"line(s)); time 30% lower: {len(timed)}/{len(cells)} cells flagged  {'ok' if ok else 'FAILED'}",
              flush=True)
    total = args.unchanged + args.doctored
    print(f"gate_proof: {total - failures}/{total} runs as expected")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
