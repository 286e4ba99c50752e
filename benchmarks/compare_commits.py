"""The spine's daemon figures for this tree against an earlier commit, in one run.

Run from the repository root:

    .venv/bin/python benchmarks/compare_commits.py 36e7463 --rounds 8

The earlier commit is exported (``git archive``) to a temporary folder. Each round
measures both trees, one figure at a time and side by side (start-up, then drops into
a running daemon, then a burst), and which tree goes first alternates from round to
round, so that a shared, noisy machine slows both sides of a pair alike. Every daemon
is the real one (``python -m daemon run``) as a subprocess, with ``PYTHONPATH`` naming
the tree it runs; the measuring code is ``bench_spine.py``'s, the same for both.

Reported per figure: each side's median over the rounds, and the median (and range)
of the per-round ratios this/earlier. Below 1 is faster (or smaller) here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_spine as spine

REPO = spine.REPO
THIS, EARLIER = "this", "earlier"
# figure -> (label, unit), in report order
FIGURES = {
    "startup": ("start-up to 'i2vd started' (median of the round's starts)", "s"),
    "latency": ("drop-to-published beyond settle, 1024x768 -> 512p 16 frames", "ms"),
    "worker": ("worker claim..finish per job", "ms"),
    "overhead_sidecar": ("per-job overhead from the sidecar (2a)", "ms"),
    "overhead_claim": ("per-job overhead, queue row claim..finish (2b)", "ms"),
    "cpu": ("daemon CPU time per drop, its ffmpeg children included", "ms"),
    "peak_rss": ("peak RSS after the drops", "MB"),
    "burst_queued": ("burst: all queued", "s"),
    "burst_drained": ("burst: all processed", "s"),
}


def export(commit: str, into: Path) -> str:
    """The commit's files in ``into``; its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", full], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {full} failed")
    return full


def use_tree(tree: Path) -> None:
    """Daemons started from now on run ``tree``'s code (``spine.Daemon`` passes
    PYTHONPATH on, after its heavy-import sentinel)."""
    os.environ["PYTHONPATH"] = str(tree)
    found = subprocess.run(
        [sys.executable, "-c", "import daemon; print(daemon.__file__)"],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"PYTHONPATH={tree} imports daemon from {found}")


def startup(work: Path, sentinel: Path, starts: int) -> dict[str, float]:
    times = []
    for index in range(starts):
        root = work / f"startup-{index}"
        config = spine.make_layout(root, "motion", spine.STANDARD_RULE)
        daemon = spine.Daemon(root, config, sentinel)
        try:
            times.append(daemon.wait_started() - daemon.spawned)
        finally:
            daemon.stop()
    return {"startup": spine.med(times)}


CPU_USED: list[float] = []  # seconds, one entry per stopped CpuDaemon


class CpuDaemon(spine.Daemon):
    """Also counts the CPU time the daemon used from 'i2vd started' to its stop: less
    swayed by other work on the machine than wall time is."""

    def cpu_seconds(self) -> float:
        # utime, stime, cutime, cstime: fields 14-17 of /proc/PID/stat (the name may hold ')').
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def wait_started(self, timeout: float = 60.0) -> float:
        stamp = super().wait_started(timeout)
        self._cpu_at_start = self.cpu_seconds()
        return stamp

    def stop(self) -> int:
        if self.proc.poll() is None and hasattr(self, "_cpu_at_start"):
            CPU_USED.append(self.cpu_seconds() - self._cpu_at_start)
        return super().stop()


def drops(work: Path, sentinel: Path, count: int) -> dict[str, float]:
    CPU_USED.clear()
    result = spine.bench_latency(work, sentinel, count, 0)
    jobs = result["jobs"]

    def col(key: str) -> float:
        return spine.med([job[key] for job in jobs]) * 1000

    return {
        "latency": col("latency"),
        "worker": col("worker"),
        "overhead_sidecar": col("overhead_sidecar"),
        "overhead_claim": col("overhead_claim_to_finish"),
        "cpu": CPU_USED[0] / count * 1000,
        "peak_rss": result["memory_kb"]["1024x768"][0] / 1024,
    }


def burst(work: Path, sentinel: Path, count: int) -> dict[str, float]:
    result = spine.bench_burst(work, sentinel, count, 600)
    if result["states"] != {"done": count} or result["drained_by"] is None:
        raise RuntimeError(f"burst ended {result['states']}")
    return {"burst_queued": result["queued_by"], "burst_drained": result["drained_by"]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    earlier_tree = work / "earlier-tree"
    trees = {THIS: REPO, EARLIER: earlier_tree}
    earlier = export(args.commit, earlier_tree)
    sentinel = spine.make_sentinel(work / "sentinel")
    # The verify timing measures this tree's code in this process: not a comparison.
    spine.time_verify = lambda path, reps: 0.0
    spine.Daemon = CpuDaemon  # type: ignore[misc]
    steps: list[Callable[[Path], dict[str, float]]] = [
        lambda w: startup(w, sentinel, args.starts),
        lambda w: drops(w, sentinel, args.drops),
        lambda w: burst(w, sentinel, args.burst),
    ]
    results: dict[str, Any] = {
        "machine": spine.machine(),
        "earlier": earlier,
        "rounds": [],
        "args": vars(args) | {"json": str(args.json)},
    }
    for index in range(args.rounds):
        order = [THIS, EARLIER] if index % 2 == 0 else [EARLIER, THIS]
        figures: dict[str, dict[str, float]] = {THIS: {}, EARLIER: {}}
        for number, step in enumerate(steps):
            for side in order:
                use_tree(trees[side])
                folder = work / f"r{index}-{number}-{side}"
                figures[side].update(step(folder))
                shutil.rmtree(folder, ignore_errors=True)
        results["rounds"].append({"order": order, "load": os.getloadavg()[0], **figures})
        print(f"# round {index + 1}/{args.rounds} ({order[0]} first): {figures}", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def report(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    lines = [
        f"this tree ({results['machine'].get('commit', '?')}) against {results['earlier'][:7]}, "
        f"{len(rounds)} rounds, load average {min(r['load'] for r in rounds):.1f}-"
        f"{max(r['load'] for r in rounds):.1f}",
        "",
        "| figure | this (median) | earlier (median) | ratio this/earlier: median of rounds "
        "(range) |",
        "| --- | --- | --- | --- |",
    ]
    for key, (label, unit) in FIGURES.items():
        if any(key not in r[THIS] for r in rounds):
            continue
        ours = [r[THIS][key] for r in rounds]
        theirs = [r[EARLIER][key] for r in rounds]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        digits = 0 if unit in ("ms", "MB") else 2
        lines.append(
            f"| {label} | {statistics.median(ours):.{digits}f} {unit} | "
            f"{statistics.median(theirs):.{digits}f} {unit} | "
            f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the earlier commit to compare against")
    parser.add_argument("--rounds", type=int, default=8, help="paired rounds")
    parser.add_argument("--starts", type=int, default=3, help="daemon starts per side a round")
    parser.add_argument("--drops", type=int, default=8, help="1024x768 drops per side a round")
    parser.add_argument("--burst", type=int, default=100, help="images in each burst")
    parser.add_argument("--json", type=Path, help="also write the raw results here, each round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="i2vd-compare-"))
    began = time.monotonic()
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    print(f"# {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
