"""Run every benchmark, print their tables, and write the report with plots.

    python -m bench.report            # full run (~15 min): docs/benchmarks.md + docs/*.png
    python -m bench.report --quick    # smoke run (< 2.5 min) into a temporary folder

Each benchmark starts its own servers and measures its baselines in the same
run; this script only runs them one after another and assembles the output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TABLES = (
    "production",
    "hot_store",
    "peers",
    "scaling",
    "tiering",
    "celery_throughput",
    "idle_flush",
    *(("cluster_model",) if (REPO / "bench" / "cluster_model.py").exists() else ()),
)
WITH_JSON = {"production", "peers", "scaling", "celery_throughput"}

NARRATIVE = {
    "production": (
        "The production path: `Threads` as a Celery worker builds it (`tasks.app.build_threads`), "
        "on Redis 7 and Valkey 9 in the same run. Append against raw `RPUSH` / a raw pipeline "
        "and a zeitlich-style script; one turn's storage calls against thread length (S3 and "
        "files, kept hot and evicted every turn, against a full snapshot per turn); the cold "
        "bytes of a long thread against a full snapshot per turn; hydrate and load against "
        "their raw floors and the OpenAI Agents SDK's `RedisSession`."
    ),
    "cluster_model": "Cluster model (`bench.cluster_model`).",
    "hot_store": "Hot tier: `HotStore` against raw redis-py on one connection.",
    "peers": (
        "Against the physical limit (raw redis-py) and peer libraries on the same Redis: a "
        "zeitlich-style append (EXISTS/RPUSH/EXPIRE/SET with one dedup key per append) and "
        "the OpenAI Agents SDK's `RedisSession`. LangGraph's Redis checkpointer is not "
        "measured: it needs the RedisJSON and RediSearch modules, which this redis-server "
        "(plain Redis, as on ElastiCache or Valkey) does not have."
    ),
    "scaling": (
        "Latency against thread length (append and tail must stay flat), fork and truncate "
        "cost, Redis memory per message, and the keys left after flushing many threads."
    ),
    "tiering": (
        "Cold tier: `Threads.flush` / `hydrate` against raw boto3 / file I/O of the same bytes."
    ),
    "celery_throughput": (
        "Celery: `threads.append` against a no-op task, and one `agent_turn` against a chain "
        "of four no-op tasks, on the same broker and worker."
    ),
    "idle_flush": (
        "Idle flush: idle threads one worker evicts per second through the `threads.flush_idle` "
        "fan-out, against the old serial loop of `Threads.flush` calls."
    ),
}

PROFILE_NOTES = """\
## Profiling and what changed

What limits the targets this run may miss (cProfile of the client, INFO commandstats
and py-spy of the worker; the closing note of issue 14 has the figures):

* **Single append vs the zeitlich-style script and raw `RPUSH`**: the gap is inside
  Redis. Our script checks the dedup ledger, writes it, the list and one meta `HSET`
  (version, lineage head, activity mark when due) and takes 9 keys; the zeitlich-style
  script does no dedup. An empty script with our keys and arguments already costs more
  than a bare `RPUSH`; the Python side (validation, encoding, the metrics wrapper) is
  about 20 µs of the total.
* **Hydrate vs the raw floor**: the floor only pushes the records. A restore also writes
  the dedup ledger (one hash field per message: about a third of the staging time),
  checks the manifest and every part (SHA-256, one msgspec pass over the records) and
  swaps the staging keys in with one script.
* **agent_turn vs four no-op tasks**: three Celery hops plus the turn's own work: the
  demo agent's storage calls, the end-of-turn flush (a segment and a manifest, each
  fsynced on the file store) and the claim/report round trips of each step.

The slowest paths of earlier releases, found with cProfile and `SLOWLOG`:

* **Load of long threads** (the worst ratio found): `HotStore.load` was a Lua
  script, and Redis spent ~150 ms inside it copying 10,000 records through Lua
  (a bare `LRANGE` takes ~2 ms): 196 ms against 40 ms raw (4.9x, `bench.peers`
  before the change). It is now one MULTI/EXEC transaction (`EXISTS` + `LRANGE`),
  which reads just as atomically; the load rows above show it at the raw floor.

* **Batch append** (Python validation before the write): `check_json` walked every
  node, pushing scalars on its stack and testing each with `isinstance` against a
  tuple. It now pushes only containers, tests exact types first and leaves
  NaN/Infinity to `json.dumps(allow_nan=False)`. Encoding 100 chat messages with
  tool calls went from 16.8 to 13.6 µs per message (`check_json` itself 3.3x
  faster); the rest is `json.dumps`.
* **Hydrate of a 50,000-message thread**: 23% of decoding was building each
  record's expected prefix with `json.dumps(id)`. Ids that need no JSON escaping
  (no `"` or `\\`) now build it directly: decoding went from 705 to 476 ms.
"""


def run(module: str, quick: bool, out: Path) -> tuple[str, dict[str, Any] | None]:
    command = [sys.executable, "-m", f"bench.{module}"]
    if quick:
        command.append("--quick")
    json_path = out / f"{module}.json"
    if module in WITH_JSON:
        command += ["--json", str(json_path)]
    if module == "cluster_model" and not quick:  # docs/scaling.md is rendered from its run
        command += ["--json", str(REPO / "docs" / "cluster_model.json")]
        command += ["--doc", str(REPO / "docs" / "scaling.md")]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
    )
    print(f"\n=== bench.{module} ({time.monotonic() - started:.0f} s) ===\n{done.stdout}")
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(f"bench.{module} failed with exit code {done.returncode}")
    data = json.loads(json_path.read_text()) if json_path.exists() else None
    return done.stdout.strip(), data


def plot_scaling(data: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data.get("scaling", []) if str(r.get("op")).startswith(("append", "tail"))]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for op in sorted({r["op"] for r in rows}):
        points = sorted(((r["length"], r) for r in rows if r["op"] == op), key=lambda p: p[0])
        lengths = [p[0] for p in points]
        ax.plot(lengths, [p[1]["ours_us"] for p in points], marker="o", label=f"{op} (ours)")
        ax.plot(lengths, [p[1]["raw_us"] for p in points], ls="--", marker="x", label=f"{op} (raw)")
    ax.set_xscale("log")
    ax.set_xlabel("messages in the thread")
    ax.set_ylabel("median latency (µs)")
    ax.set_title("Latency against thread length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_peers(data: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data.get("rows", []) if "median" in r.get("measure", "")]
    rows = [r for r in rows if r.get("unit") != "ops/s"]
    if not rows:
        return False
    columns = [
        ("raw", "limit (raw redis-py)"),
        ("ours", "agent-threads"),
        ("zeitlich", "zeitlich-style"),
        ("openai_agents", "openai-agents RedisSession"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for k, (key, label) in enumerate(columns):
        values = [1e6 / r[key] if r.get(key) else 0 for r in rows]
        ax.bar([i + k * width for i in range(len(rows))], values, width, label=label)
    ax.set_xticks([i + 1.5 * width for i in range(len(rows))])
    labels = [r["measure"].replace(", median", "") for r in rows]
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("operations per second (higher is better)")
    ax.set_yscale("log")
    ax.set_title("Throughput of one connection: agent-threads, the limit and peers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_turns(data: dict[str, Any], path: Path) -> bool:
    """Turn cost against thread length: kept hot, evicted per turn, full snapshot."""
    rows = data.get("turns", [])
    if not rows:
        return False
    plt = _pyplot()
    stores = sorted({r["store"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(stores), figsize=(10, 4), sharey=True)
    labels = {
        "hot": "ours, kept hot (default)",
        "evict": "ours, evicted every turn",
        "snapshot": "full snapshot per turn (raw)",
    }
    for ax, store in zip(axes if len(stores) > 1 else [axes], stores, strict=True):
        for mode, label in labels.items():
            points = sorted(
                (r["length"], r["ms"]) for r in rows if (r["store"], r["mode"]) == (store, mode)
            )
            style = {"ls": "--", "marker": "x"} if mode == "snapshot" else {"marker": "o"}
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages in the thread")
        ax.set_title(f"cold store: {store}")
    axes_list = axes if len(stores) > 1 else [axes]
    axes_list[0].set_ylabel("median ms per turn")
    axes_list[0].legend(fontsize=8)
    fig.suptitle("One turn's storage calls against thread length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_append(data: dict[str, Any], path: Path) -> bool:
    """Append 1 and batch of 100 against raw and zeitlich-style, per server."""
    rows = [r for r in data.get("append", []) if "p99" not in r["measure"]]
    if not rows:
        return False
    plt = _pyplot()
    measures = list(dict.fromkeys(r["measure"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    columns = [
        ("ours_us", "agent-threads Threads.append"),
        ("zeitlich_us", "zeitlich-style"),
        ("raw_us", "raw RPUSH / pipeline"),
    ]
    fig, axes = plt.subplots(1, len(measures), figsize=(10, 4))
    width = 0.25
    for ax, measure in zip(axes, measures, strict=True):
        for k, (key, label) in enumerate(columns):
            values = [
                next(r[key] for r in rows if (r["server"], r["measure"]) == (srv, measure))
                for srv in servers
            ]
            ax.bar([i + k * width for i in range(len(servers))], values, width, label=label)
        ax.set_xticks([i + width for i in range(len(servers))])
        ax.set_xticklabels(servers)
        ax.set_title(measure)
        ax.set_ylabel("median µs (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Append on the production path, Redis and Valkey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_bytes(data: dict[str, Any], path: Path) -> bool:
    """Cumulative cold bytes against turn: ours (S3, files) and a full snapshot per turn."""
    series = data.get("bytes", {})
    if not series:
        return False
    plt = _pyplot()
    labels = {"s3": "ours, S3", "file": "ours, files", "snapshot": "full snapshot per turn"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, per_turn in series.items():
        total, points = 0, []
        for size in per_turn:
            total += size
            points.append(total / 1e6)
        style = {"ls": "--"} if name == "snapshot" else {}
        ax.plot(range(1, len(points) + 1), points, label=labels.get(name, name), **style)
    ax.set_xlabel("turn (4 records each)")
    ax.set_ylabel("cumulative bytes written to the cold tier (MB)")
    ax.set_title("Cold bytes over a long thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def targets(
    production: dict[str, Any] | None, celery: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The issue's targets, from this run: bench.production's and agent_turn's."""
    rows = list((production or {}).get("targets", []))
    if celery:
        measured = celery["agent_turn_ms"] / celery["four_noops_ms"]
        rows.append(
            {
                "target": "agent_turn (scripted, thread hot) / chain of four no-op tasks",
                "measured": round(measured, 3),
                "limit": 1.0,
                "unit": "x",
                "met": measured <= 1.0,
            }
        )
    return rows


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | limit | met |", "|---|---:|---:|:---:|"]
    for r in rows:
        met = "yes" if r["met"] else "**no**"
        lines.append(
            f"| {r['target']} | {r['measured']:.3f}{r['unit']} "
            f"| <= {r['limit']}{r['unit']} | {met} |"
        )
    return lines


PLOTS: tuple[tuple[str, str, Any], ...] = (
    ("production", "bench-turns.png", plot_turns),
    ("production", "bench-append.png", plot_append),
    ("production", "bench-cold-bytes.png", plot_bytes),
    ("peers", "bench-peers.png", plot_peers),
    ("scaling", "bench-scaling.png", plot_scaling),
)
"""(benchmark whose JSON it draws, image file, drawing function)"""
PLOT_TITLES = {
    "bench-turns.png": "Turn cost against thread length",
    "bench-append.png": "Append on the production path, Redis and Valkey",
    "bench-cold-bytes.png": "Cumulative cold bytes over a long thread",
    "bench-peers.png": "Throughput against the limit and peers",
    "bench-scaling.png": "Latency against thread length",
}


def versions() -> str:
    import boto3
    import celery
    import redis

    from storage.embedded import find_redis_server

    server = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    redis_version = next((w.split("=")[1] for w in server if w.startswith("v=")), "?")
    from bench.harness import servers

    engines = ", ".join(f"{s.name}-server {s.version}" for s in servers()[0])
    return (
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"redis-server {redis_version}; bench.production also on {engines}; "
        f"redis-py {redis.__version__}, celery {celery.__version__}, boto3 {boto3.__version__}"
    )


def replot(folder: Path) -> None:
    """Redraw the plots from the JSON a previous run left in ``folder``."""
    for name, image, plot in PLOTS:
        source = folder / f"{name}.json"
        if source.exists():
            plot(json.loads(source.read_text()), folder / image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run into a temp folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report")
    parser.add_argument("--replot", action="store_true", help="only redraw the plots in --out")
    options = parser.parse_args()
    if options.replot:
        replot(options.out or REPO / "docs")
        return
    out = options.out or (Path(tempfile.mkdtemp()) if options.quick else REPO / "docs")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    results = {module: run(module, options.quick, out) for module in TABLES}
    plots = []
    for name, image, plot in PLOTS:
        data = results[name][1]
        if data and plot(data, out / image):
            plots.append((PLOT_TITLES[image], image))
    met = targets(results["production"][1], results["celery_throughput"][1])
    command = "make bench" if not options.quick else "python -m bench.report --quick"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {datetime.date.today()} "
        f"({time.monotonic() - started:.0f} s). {versions()}. Load average at the start "
        f"{load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "Every benchmark starts its own servers on loopback and measures its baselines in",
        "the same run, so read the ratios: the machine is shared and absolute times move.",
        "Rerun one part with `python -m bench.<name>` (`--quick` for a smoke run).",
        "",
    ]
    if met:
        lines += [
            "## Targets",
            "",
            f"Computed from this run (`bench.production`, `bench.celery_throughput`): "
            f"{sum(r['met'] for r in met)} of {len(met)} met. Ratios are ours / baseline.",
            "",
            *targets_table(met),
            "",
            "Turn cost is `bench.production` part 2 with the thread kept hot. Upload per turn is",
            "the median of the last tenth of the turns over the first tenth (flat when a flush",
            "uploads only the new records; a merge of segments or a new base is an amortised",
            "spike). Cumulative bytes are O(N) when the second half of the turns uploads about",
            "as much as the first (a full snapshot per turn, O(N²), uploads three times as much);",
            "the ratio to that full-snapshot baseline is given in the row.",
            "",
        ]
    for title, image in plots:
        lines += [f"![{title}]({image})", ""]
    for module in TABLES:
        lines += [
            f"## bench.{module}",
            "",
            NARRATIVE[module],
            "",
            "```",
            results[module][0],
            "```",
            "",
        ]
    lines.append(PROFILE_NOTES)
    report = out / "benchmarks.md"
    report.write_text("\n".join(lines))
    print(f"\nwrote {report} and {len(plots)} plots in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
