"""The long fault-injection run: every fault kind, ``--kills`` kill -9 points, one table.

    sudo env PYTHONPATH=$PWD .venv/bin/python tests/faults/run.py --kills 100

Needs root (tmpfs and bind mounts). Each scenario runs on its own folders under a new
temporary directory with its own mounts, unmounted however it ends. Prints a Markdown
table (the figures in BENCHMARKS.md's "Reliability" section) and each scenario's
notes; ``--json`` also writes them to a file. Exit code 1 when any figure that must
be 0 is not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import scenarios  # noqa: E402
from faultkit import TABLE_HEADER, Mounts, Tally, can_mount, mounts  # noqa: E402

Scenario = Callable[[Path, Mounts], Tally]


def plan(kills: int, seed: int) -> dict[str, Scenario]:
    same = kills // 2
    return {
        "kill": lambda root, m: scenarios.kill_points(root, m, same, seed),
        "kill-cross": lambda root, m: scenarios.kill_points(
            root, m, kills - same, seed + 1, cross_device=True
        ),
        "full-outbox": scenarios.full_outbox,
        "full-state": scenarios.full_state_disk,
        "ro-outbox": scenarios.read_only_outbox,
        "inbox-renamed": scenarios.inbox_renamed,
        "inbox-unmounted": scenarios.inbox_unmounted,
        "inbox-lazy-publish": scenarios.inbox_lazy_unmount_mid_publish,
        "outbox-unmounted": scenarios.outbox_unmounted,
        "outbox-renamed": scenarios.outbox_renamed,
        "hostile": scenarios.hostile_corpus,
        "signals": scenarios.signal_storm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="kill -9 points in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's folders")
    args = parser.parse_args(argv)
    if not can_mount():
        print("run.py needs root and permission to mount tmpfs and bind mounts", file=sys.stderr)
        return 2
    chosen = plan(args.kills, args.seed)
    names = args.only or list(chosen)
    tallies: list[Tally] = []
    for name in names:
        root = Path(tempfile.mkdtemp(prefix=f"i2vd-faults-{name}-"))
        started = time.monotonic()
        try:
            with mounts() as made:
                tally = chosen[name](root, made)
        except Exception as exc:  # a scenario that cannot finish is a finding too
            tally = Tally(name, notes=[f"scenario did not finish: {exc!r}"])
            tally.unfinished = -1
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        tally.notes.insert(0, f"{time.monotonic() - started:.0f}s in {root}")
        tallies.append(tally)
        print(tally.row(), flush=True)
    print()
    print(TABLE_HEADER)
    for tally in tallies:
        print(tally.row())
    print()
    for tally in tallies:
        print(f"{tally.kind}: {'; '.join(tally.notes[:12])}")
        if tally.bad():
            print(f"  NOT ZERO: {tally.bad()}")
    if args.json:
        args.json.write_text(json.dumps([t.as_dict() for t in tallies], indent=2))
    return 1 if any(t.bad() for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
