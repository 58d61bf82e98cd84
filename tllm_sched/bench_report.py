"""tllm_sched/bench_report.py: the outputs of `tllm-sched bench`: table, results.json, report.md
and report.png.

results.json ("format": "tllm_sched.bench/1"; "kind": synthetic, trace or prompt-length-sweep)
holds the machine and versions, the run's configuration and a `results` list, one entry per
(workload, policy, n_active, backend) with at least workload, policy, backend, n_active, steps,
median_us, p99_us, crossings_per_step; times are microseconds of scheduler time per step, wall
clock (median_us, p99_us, mean_us, total_s) and thread CPU time (cpu_median_us, cpu_mean_us,
cpu_p99_us, cpu_total_s). matplotlib is optional: without it report.png is not written and
everything else is.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Optional, Tuple

from tllm_sched.files import AtomicFile
from tllm_sched.registry import CAPACITY_POLICIES

FORMAT = "tllm_sched.bench/1"
SWEEP = "prompt-length-sweep"  # the kind of a --prompt-length-sweep run
REQUIRED = ("workload", "policy", "backend", "n_active", "steps", "median_us", "p99_us", "crossings_per_step")
POLICY_SHORT = {p.name: p.short for p in CAPACITY_POLICIES.values()}

__all__ = ["FORMAT", "REQUIRED", "SWEEP", "add_ratios", "format_sweep_table", "format_table", "machine_info",
           "table_for", "write_outputs"]


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
    """Sets ratio_to_cpp (median over the cpp median of the same cell) and cpu_ratio_to_cpp (the
    same in thread CPU time) on every entry."""
    for key, ratio in (("median_us", "ratio_to_cpp"), ("cpu_median_us", "cpu_ratio_to_cpp")):
        cpp = {_key(r): r.get(key) for r in results if r["backend"] == "cpp"}
        for r in results:
            base, v = cpp.get(_key(r)), r.get(key)
            r[ratio] = v / base if base and v is not None else None


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _text_table(head: Tuple[str, ...], rows: List[Tuple[str, ...]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right."""
    rows = [head] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: Iterable[dict]) -> str:
    """The printed table: one row per (workload, policy, N, backend). Wall-clock median, p99 and
    mean, then thread CPU time median, mean and p99 (µs per step), then total seconds (wall)."""
    head = ("workload", "policy", "N", "backend", "steps", "median_us", "p99_us", "mean_us", "cpu_med", "cpu_mean",
            "cpu_p99", "total_s", "cross/step", "x cpp", "exec_us")
    rows = [(r["workload"], POLICY_SHORT.get(r["policy"], r["policy"]), str(r["n_active"]), r["backend"],
             str(r["steps"]), _fmt(r["median_us"]), _fmt(r["p99_us"]), _fmt(r.get("mean_us")),
             _fmt(r.get("cpu_median_us")), _fmt(r.get("cpu_mean_us")), _fmt(r.get("cpu_p99_us")),
             _fmt(r.get("total_s"), ".2f"), _fmt(r["crossings_per_step"], ".1f", "n/a"),
             _fmt(r.get("ratio_to_cpp"), ".2f"), _fmt(r.get("exec_median_us"))) for r in results]
    return _text_table(head, rows, 4)


def format_sweep_table(results: Iterable[dict]) -> str:
    """The printed table of a prompt-length sweep: thread CPU µs per scheduling pass against the
    shared prefix's length, and its growth over the shortest prefix (1.0: no growth)."""
    head = ("prefix", "policy", "backend", "first_cpu_us", "cpu_med", "cpu_mean", "cpu_p99", "median_us",
            "us/waiting", "walks/step", "growth", "x cpp")
    rows = [(f"{r['prefix_len']:,}", POLICY_SHORT.get(r["policy"], r["policy"]), r["backend"],
             _fmt(r["first_cpu_us"]), _fmt(r["cpu_median_us"]), _fmt(r["cpu_mean_us"]), _fmt(r["cpu_p99_us"]),
             _fmt(r["median_us"]), _fmt(r["cpu_us_per_waiting"], ".2f"), _fmt(r["key_walks_per_step"], ".1f"),
             _fmt(r.get("growth"), ".2f"), _fmt(r.get("cpu_ratio_to_cpp"), ".2f")) for r in results]
    return _text_table(head, rows, 3)


def table_for(doc: dict) -> str:
    """The printed table of a run of any kind."""
    return format_sweep_table(doc["results"]) if doc["kind"] == SWEEP else format_table(doc["results"])


def _markdown_table(results: Iterable[dict]) -> str:
    head = ("| workload | policy | N | backend | steps | median µs | p99 µs | mean µs | CPU median µs | CPU mean µs "
            "| CPU p99 µs | total s | CPU total s | µs/request | crossings/step | × cpp | × cpp (CPU) | executor µs |")
    out = [head, "|" + "---|" * 4 + "---:|" * 14]
    for r in results:
        out.append(f"| {r['workload']} | {r['policy']} | {r['n_active']} | {r['backend']} | {r['steps']} | "
                   f"{_fmt(r['median_us'])} | {_fmt(r['p99_us'])} | {_fmt(r.get('mean_us'))} | "
                   f"{_fmt(r.get('cpu_median_us'))} | {_fmt(r.get('cpu_mean_us'))} | {_fmt(r.get('cpu_p99_us'))} | "
                   f"{_fmt(r.get('total_s'), '.3f')} | {_fmt(r.get('cpu_total_s'), '.3f')} | "
                   f"{_fmt(r.get('us_per_request'), '.3f')} | {_fmt(r['crossings_per_step'], '.1f', 'n/a')} | "
                   f"{_fmt(r.get('ratio_to_cpp'), '.2f')} | {_fmt(r.get('cpu_ratio_to_cpp'), '.2f')} | "
                   f"{_fmt(r.get('exec_median_us'))} |")
    return "\n".join(out)


def _markdown_reuse(results: List[dict]) -> List[str]:
    """The reuse rows' queue and cache figures (synthetic runs with KV reuse on)."""
    rows = [r for r in results if r.get("reuse_hit_rate") is not None]
    if not rows:
        return []
    out = ["| workload | policy | N | backend | waiting (mean) | key walks/step | reuse hit rate | finished/step |",
           "|---|---|---|---|" + "---:|" * 4]
    out += [f"| {r['workload']} | {POLICY_SHORT.get(r['policy'], r['policy'])} | {r['n_active']} | {r['backend']} | "
            f"{_fmt(r.get('waiting_mean'))} | {_fmt(r.get('key_walks_per_step'))} | {r['reuse_hit_rate']:.3f} | "
            f"{_fmt(r.get('finished_per_step'), '.2f')} |" for r in rows]
    return out + [""]


def _markdown_sweep(results: List[dict]) -> List[str]:
    out = ["| policy | shared prefix (tokens) | backend | first pass CPU µs | CPU median µs | CPU mean µs | CPU p99 µs "
           "| median µs | CPU µs per waiting prompt | key walks/pass | growth over the shortest | × cpp (CPU) |",
           "|---|---:|---|" + "---:|" * 9]
    out += [f"| {POLICY_SHORT.get(r['policy'], r['policy'])} | {r['prefix_len']:,} | {r['backend']} | "
            f"{_fmt(r['first_cpu_us'])} | {_fmt(r['cpu_median_us'])} | {_fmt(r['cpu_mean_us'])} | "
            f"{_fmt(r['cpu_p99_us'])} | {_fmt(r['median_us'])} | {_fmt(r['cpu_us_per_waiting'], '.2f')} | "
            f"{_fmt(r['key_walks_per_step'], '.1f')} | {_fmt(r.get('growth'), '.2f')} | "
            f"{_fmt(r.get('cpu_ratio_to_cpp'), '.2f')} |" for r in results]
    return out + [""]


def write_outputs(doc: dict, out_dir: str, plot: bool = True) -> List[str]:
    """Writes results.json, report.md and (with matplotlib) report.png; returns the paths written.
    Each is written whole to a temporary file and all are renamed into place once all are on disk:
    an OSError (a full disk) leaves the earlier files as they were."""
    os.makedirs(out_dir, exist_ok=True)
    js, md, png = (os.path.join(out_dir, name) for name in ("results.json", "report.md", "report.png"))
    files = [AtomicFile(js)]
    try:
        json.dump(doc, files[0].file, indent=1)
        files[0].file.write("\n")
        drawn = False
        if plot:
            files.append(AtomicFile(png, binary=True))
            drawn = _plot(doc, files[-1].file)
            if not drawn:
                files.pop().discard()
        files.append(AtomicFile(md))
        files[-1].file.write(_markdown(doc, drawn))
        for f in files:
            f.finish()
        for f in files:
            f.commit()
    finally:
        for f in files:
            f.discard()  # nothing after a commit
    if not drawn and os.path.exists(png):
        os.remove(png)  # a stale picture of an earlier run would mislead
    return [js, md] + ([png] if drawn else [])


def _markdown(doc: dict, drawn: bool) -> str:
    m = doc["machine"]
    lines = [f"# tllm_sched benchmark ({doc['kind']})", "",
             f"{doc['created']} · {m['cpu']} ({m['cpu_count']} cores) · Python {m['python']} · numpy {m['numpy']} · "
             f"tllm_sched {m['tllm_sched']}" + (f" ({m['git_commit'][:12]})" if m.get("git_commit") else ""), "",
             "Times are scheduler time per step (`Scheduler.schedule`; per pass in a prompt-length sweep): wall "
             "clock (`time.perf_counter_ns`) and the thread's CPU time (`time.thread_time_ns`, which leaves out "
             "the time the thread was preempted on a shared machine), median, mean and p99 over the measured "
             "steps, and their totals; the executor column is the simulated executor's C++ step plus the "
             "release of finished requests, timed separately. × cpp: median over the cpp median of the same "
             "row group. Every step's decisions (a checksum of its output slot arrays) were compared across "
             "the backends.", ""]
    if doc["kind"] == "trace":
        t = doc["trace"]
        lines += [f"Trace `{t['path']}` ({t['format']}): {t['requests']} requests, "
                  f"{t['duration_s']:.0f} s of arrivals; wall time {doc['wall_s']:.1f} s.", ""]
    lines += [f"- {n}" for n in doc.get("notes", [])] + [""]
    if doc["kind"] == SWEEP:
        lines += _markdown_sweep(doc["results"])
    else:
        lines += [_markdown_table(doc["results"]), ""]
    if doc["kind"] == "synthetic":
        lines += _markdown_reuse(doc["results"])
    if doc["kind"] == "trace":
        lines += ["| policy | backend | sched p90 µs | p99.9 µs | max µs | in flight mean/max | queued mean/max "
                  "| KV util mean/max | reuse hit rate | key walks/step | requests done | simulated s |",
                  "|---|---|" + "---:|" * 10]
        for r in doc["results"]:
            lines.append(f"| {POLICY_SHORT.get(r['policy'], r['policy'])} | {r['backend']} | {_fmt(r['p90_us'])} | "
                         f"{_fmt(r['p999_us'])} | {_fmt(r['max_us'])} | "
                         f"{r['in_flight_mean']:.1f} / {r['in_flight_max']} | "
                         f"{r['queued_mean']:.1f} / {r['queued_max']} | "
                         f"{r['kv_util_mean']:.2f} / {r['kv_util_max']:.2f} | {r['reuse_hit_rate']:.3f} | "
                         f"{_fmt(r.get('key_walks_per_step'))} | {r['requests_done']} | {r['simulated_s']:.0f} |")
        lines.append("")
    return "\n".join(lines + markdown_tail(doc, drawn))


def markdown_tail(doc: dict, drawn: bool) -> List[str]:
    """The end of a report.md: the picture (if drawn) and the configuration as JSON."""
    return (["![report](report.png)", ""] if drawn else []) + [
        "Configuration:", "", "```json", json.dumps(doc["config"], indent=1), "```", ""]


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None without matplotlib (an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plot(doc: dict, out) -> bool:
    """Draws the report's picture into the binary file `out`; False without matplotlib or data."""
    plt = pyplot()
    if plt is None:
        return False
    draw = {"trace": _plot_trace, SWEEP: _plot_sweep}.get(doc["kind"], _plot_synthetic)
    fig = draw(plt, doc)
    if fig is None:
        return False
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)
    return True


# Line styles of the plots: what each backend's lines show. Thread CPU time, since a shared
# machine's preemption inflates wall-clock times (the tables have both).
_STYLES = (("cpu_median_us", "-", "median"), ("cpu_mean_us", ":", "mean"), ("cpu_p99_us", "--", "p99"))


def _style_legend(ax, backends: List[str], colors: Dict[str, str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[b], label=b) for b in backends]
    handles += [Line2D([], [], color="gray", linestyle=ls, label=label) for _, ls, label in _STYLES]
    ax.legend(handles=handles, fontsize="small")


def _plot_lines(ax, results: List[dict], x: str, backends: List[str], colors: Dict[str, str]) -> None:
    """One line per (backend, style) of `results` against the key `x`."""
    for b in backends:
        for key, ls, _ in _STYLES:
            pts = sorted((r[x], r[key]) for r in results if r["backend"] == b and r.get(key))
            if pts:
                ax.plot(*zip(*pts), marker="o" if ls == "-" else None, linestyle=ls, color=colors[b])


def _colors(backends: List[str]) -> Dict[str, str]:
    return {b: f"C{i}" for i, b in enumerate(backends)}


def _plot_synthetic(plt, doc: dict):
    results = doc["results"]
    cells = sorted({(r["workload"], r["policy"]) for r in results})
    if not cells:
        return None
    backends = list(dict.fromkeys(r["backend"] for r in results))
    colors = _colors(backends)
    cols = min(2, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, (wl, pol) in zip(axes.flat, cells):
        _plot_lines(ax, [r for r in results if (r["workload"], r["policy"]) == (wl, pol)], "n_active", backends,
                    colors)
        ax.set(xscale="log", yscale="log", title=f"{wl}, {pol}", xlabel="active requests",
               ylabel="scheduler thread CPU µs per step")
        ax.grid(True, which="both", alpha=0.3)
        _style_legend(ax, backends, colors)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _plot_sweep(plt, doc: dict):
    results = doc["results"]
    policies = list(dict.fromkeys(r["policy"] for r in results))
    if not policies:
        return None
    backends = list(dict.fromkeys(r["backend"] for r in results))
    colors = _colors(backends)
    fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.5), squeeze=False)
    for ax, pol in zip(axes.flat, policies):
        _plot_lines(ax, [r for r in results if r["policy"] == pol], "prefix_len", backends, colors)
        r0 = next(r for r in results if r["policy"] == pol)
        ax.set(xscale="log", yscale="log", xlabel="shared prefix (tokens)",
               ylabel="scheduler thread CPU µs per pass",
               title=f"{pol}: {r0['running']} running + {r0['waiting']} waiting, hashes known")
        ax.grid(True, which="both", alpha=0.3)
        _style_legend(ax, backends, colors)
    fig.tight_layout()
    return fig


def _plot_trace(plt, doc: dict):
    series = doc.get("series") or {}
    if not series:
        return None
    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(2, 3, height_ratios=(3, 2))
    a1 = fig.add_subplot(grid[0, :2])
    a2 = fig.add_subplot(grid[1, :2], sharex=a1)
    a4 = fig.add_subplot(grid[:, 2])
    for b, s in series.items():
        cpu = "cpu_median_us" in s  # results files written before thread CPU time was recorded lack it
        (line,) = a1.plot(s["time_s"], s["cpu_median_us" if cpu else "sched_median_us"], label=f"{b} median")
        a1.plot(s["time_s"], s["cpu_p99_us" if cpu else "sched_p99_us"], alpha=0.4, linestyle="--",
                color=line.get_color(), label=f"{b} p99")
    a1.set(yscale="log", ylabel="scheduler thread CPU µs per step", title=f"trace "
           f"{os.path.basename(doc['trace']['path'])}, {doc['config']['policy']}")
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
    _bars(a4, doc["results"])
    fig.tight_layout()
    return fig


def _bars(ax, results: List[dict]) -> None:
    """Whole-run thread CPU time per backend: median, mean and p99 µs per step, total seconds."""
    keys = (("cpu_median_us", "median"), ("cpu_mean_us", "mean"), ("cpu_p99_us", "p99"))
    rows = [r for r in results if r.get("cpu_median_us")]
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar([i + (j - 1) * width for i in range(len(rows))], [r[key] for r in rows], width, label=label)
    names = [r["backend"] if len({x["policy"] for x in rows}) == 1 else
             f"{POLICY_SHORT.get(r['policy'], r['policy'])}/{r['backend']}" for r in rows]
    ax.set_xticks(range(len(rows)), [f"{n}\n{r['cpu_total_s']:.2f} s in all" for n, r in zip(names, rows)],
                  fontsize="small")
    ax.set(yscale="log", ylabel="scheduler thread CPU µs per step", title="whole run (thread CPU time)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summary_note(results: List[dict]) -> Optional[str]:
    """A warning if the backends did not make identical decisions (they must)."""
    if any(r.get("decisions_match") is False for r in results):
        return "WARNING: backends made different decisions in some runs (decisions_match false)"
    return None
