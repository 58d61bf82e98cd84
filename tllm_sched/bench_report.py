"""tllm_sched/bench_report.py: the outputs of `tllm-sched bench`: table, results.json, report.md
and report.png.

results.json ("format": "tllm_sched.bench/1") holds the machine and versions, the run's
configuration and a `results` list, one entry per (workload, policy, n_active, backend) with at
least workload, policy, backend, n_active, steps, median_us, p99_us, crossings_per_step; times
are microseconds of scheduler time per step. matplotlib is optional: without it report.png is
not written and everything else is.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Optional, Tuple

FORMAT = "tllm_sched.bench/1"
REQUIRED = ("workload", "policy", "backend", "n_active", "steps", "median_us", "p99_us", "crossings_per_step")
POLICY_SHORT = {"GUARANTEED_NO_EVICT": "GNE", "MAX_UTILIZATION": "MU", "STATIC_BATCH": "SB"}

__all__ = ["FORMAT", "REQUIRED", "add_ratios", "format_table", "machine_info",
           "write_outputs"]


def machine_info() -> Dict[str, object]:
    """The machine and versions (never raises)."""
    import numpy

    import tllm_sched

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: Dict[str, object] = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "numpy": numpy.__version__, "tllm_sched": tllm_sched.__version__,
    }
    for mod in ("matplotlib", "tqdm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # optional extras  # noqa: BLE001
            info[mod] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git_commit"] = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=5, check=True).stdout.strip() or None
    except Exception:  # not a checkout, or no git  # noqa: BLE001
        info["git_commit"] = None
    return info


def _key(r: dict) -> Tuple[str, str, int]:
    return r["workload"], r["policy"], int(r["n_active"])


def add_ratios(results: List[dict]) -> None:
    """Sets ratio_to_cpp (median over the cpp median of the same cell) on every entry."""
    cpp = {_key(r): r["median_us"] for r in results if r["backend"] == "cpp"}
    for r in results:
        base = cpp.get(_key(r))
        r["ratio_to_cpp"] = r["median_us"] / base if base and r["median_us"] is not None else None


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_table(results: Iterable[dict]) -> str:
    """The printed table: one row per (workload, policy, N, backend)."""
    head = ("workload", "policy", "N", "backend", "steps", "median_us", "p99_us", "us/req", "cross/step", "x cpp",
            "exec_us")
    rows = [head]
    for r in results:
        rows.append((r["workload"], POLICY_SHORT.get(r["policy"], r["policy"]), str(r["n_active"]), r["backend"],
                     str(r["steps"]), _fmt(r["median_us"]), _fmt(r["p99_us"]), _fmt(r.get("us_per_request"), ".3f"),
                     _fmt(r["crossings_per_step"], ".1f", "n/a"), _fmt(r.get("ratio_to_cpp"), ".2f"),
                     _fmt(r.get("exec_median_us"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(results: Iterable[dict]) -> str:
    head = ("| workload | policy | N | backend | steps | median µs | p99 µs | µs/request | crossings/step | × cpp "
            "| executor µs |")
    out = [head, "|" + "---|" * 4 + "---:|" * 7]
    for r in results:
        out.append(f"| {r['workload']} | {r['policy']} | {r['n_active']} | {r['backend']} | {r['steps']} | "
                   f"{_fmt(r['median_us'])} | {_fmt(r['p99_us'])} | {_fmt(r.get('us_per_request'), '.3f')} | "
                   f"{_fmt(r['crossings_per_step'], '.1f', 'n/a')} | {_fmt(r.get('ratio_to_cpp'), '.2f')} | "
                   f"{_fmt(r.get('exec_median_us'))} |")
    return "\n".join(out)


def write_outputs(doc: dict, out_dir: str, plot: bool = True) -> List[str]:
    """Writes results.json, report.md and (with matplotlib) report.png; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    png = os.path.join(out_dir, "report.png")
    drawn = plot and _plot(doc, png)
    md = os.path.join(out_dir, "report.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(_markdown(doc, drawn))
    paths.append(md)
    if drawn:
        paths.append(png)
    elif os.path.exists(png):
        os.remove(png)  # a stale picture of an earlier run would mislead
    return paths


def _markdown(doc: dict, drawn: bool) -> str:
    m = doc["machine"]
    lines = [f"# tllm_sched benchmark ({doc['kind']})", "",
             f"{doc['created']} · {m['cpu']} ({m['cpu_count']} cores) · Python {m['python']} · numpy {m['numpy']} · "
             f"tllm_sched {m['tllm_sched']}" + (f" ({m['git_commit'][:12]})" if m.get("git_commit") else ""), "",
             "Times are scheduler time per step (`Scheduler.schedule`, `time.perf_counter_ns`), median and p99 over "
             "the measured steps; the executor column is the simulated executor's C++ step plus the release of "
             "finished requests, timed separately. × cpp: median over the cpp median of the same row group.", ""]
    if doc["kind"] == "trace":
        t = doc["trace"]
        lines += [f"Trace `{t['path']}` ({t['format']}): {t['requests']} requests, "
                  f"{t['duration_s']:.0f} s of arrivals; wall time {doc['wall_s']:.1f} s.", ""]
    lines += [f"- {n}" for n in doc.get("notes", [])] + [""]
    lines += [_markdown_table(doc["results"]), ""]
    if doc["kind"] == "trace":
        lines += ["| policy | backend | sched p90 µs | p99.9 µs | max µs | in flight mean/max | queued mean/max "
                  "| KV util mean/max | reuse hit rate | requests done | simulated s |", "|---|---|" + "---:|" * 9]
        for r in doc["results"]:
            lines.append(f"| {POLICY_SHORT.get(r['policy'], r['policy'])} | {r['backend']} | {_fmt(r['p90_us'])} | {_fmt(r['p999_us'])} | {_fmt(r['max_us'])} | "
                         f"{r['in_flight_mean']:.1f} / {r['in_flight_max']} | "
                         f"{r['queued_mean']:.1f} / {r['queued_max']} | "
                         f"{r['kv_util_mean']:.2f} / {r['kv_util_max']:.2f} | {r['reuse_hit_rate']:.3f} | "
                         f"{r['requests_done']} | {r['simulated_s']:.0f} |")
        lines.append("")
    if drawn:
        lines += ["![report](report.png)", ""]
    lines += ["Configuration:", "", "```json", json.dumps(doc["config"], indent=1), "```", ""]
    return "\n".join(lines)


def _plot(doc: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if doc["kind"] == "trace":
        fig = _plot_trace(plt, doc)
    else:
        fig = _plot_synthetic(plt, doc["results"])
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_synthetic(plt, results: List[dict]):
    cells = sorted({(r["workload"], r["policy"]) for r in results})
    if not cells:
        return None
    cols = min(2, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, (wl, pol) in zip(axes.flat, cells):
        for b in dict.fromkeys(r["backend"] for r in results):
            pts = sorted((r["n_active"], r["median_us"]) for r in results
                         if (r["workload"], r["policy"], r["backend"]) == (wl, pol, b) and r["median_us"])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=b)
        ax.set(xscale="log", yscale="log", title=f"{wl}, {pol}", xlabel="active requests",
               ylabel="scheduler µs per step (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _plot_trace(plt, doc: dict):
    series = doc.get("series") or {}
    if not series:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for b, s in series.items():
        (line,) = a1.plot(s["time_s"], s["sched_median_us"], label=f"{b} median")
        a1.plot(s["time_s"], s["sched_p99_us"], alpha=0.4, linestyle="--", color=line.get_color(), label=f"{b} p99")
    a1.set(yscale="log", ylabel="scheduler µs per step", title=f"trace {os.path.basename(doc['trace']['path'])}, "
           f"{doc['config']['policy']}")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize="small")
    s = next(iter(series.values()))
    a2.plot(s["time_s"], s["in_flight"], label="in flight")
    a2.plot(s["time_s"], s["queued"], label="queued")
    a2.set(xlabel="simulated time (s)", ylabel="requests")
    a2.grid(True, alpha=0.3)
    ax3 = a2.twinx()
    ax3.plot(s["time_s"], s["kv_util"], color="gray", alpha=0.6, label="KV utilisation")
    ax3.set(ylabel="KV utilisation", ylim=(0, 1.05))
    a2.legend(loc="upper left")
    ax3.legend(loc="upper right")
    fig.tight_layout()
    return fig


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summary_note(results: List[dict]) -> Optional[str]:
    """A warning if the backends did not make identical decisions (they must)."""
    if any(r.get("decisions_match") is False for r in results):
        return "WARNING: backends made different decisions in some runs (decisions_match false)"
    return None
