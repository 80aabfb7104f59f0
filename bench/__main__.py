"""Run every benchmark in order: ``python -m bench all [--quick]`` (what ``make bench`` does),
or one with its own options: ``python -m bench tracing --batch 250``.

Each benchmark is a module run in its own process, so one's event loop, pools and servers
cannot disturb the next one's figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time

# In the order they should run; a module that is absent is reported, not silently skipped.
BENCHMARKS = [
    "pickup",
    "throughput",
    "submit",
    "saturation",
    "stats_scale",
    "memory",
    "floor",
    "tracing",
    "startup",
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", nargs="?", default="all", help="'all' or a benchmark name")
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 2 minutes)")
    # A single benchmark's own options pass through: python -m bench tracing --batch 250
    args, extra = parser.parse_known_args()
    if extra and args.which == "all":
        parser.error(f"options for one benchmark need its name: {' '.join(extra)}")
    names = BENCHMARKS if args.which == "all" else [args.which]
    failed = []
    for name in names:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"== {name}: not implemented yet", flush=True)
            continue
        print(f"== {name}", flush=True)
        started = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else []), *extra]
        code = subprocess.call(cmd)
        print(f"== {name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
