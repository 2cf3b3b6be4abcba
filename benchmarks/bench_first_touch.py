"""What the first write of fresh memory costs on this machine, by page size.

    python benchmarks/bench_first_touch.py --gb 2 --rounds 2

A Lanczos step at 10^8 parameters keeps one more 800 MB basis row, so the first touch
of fresh memory is part of its cost (docs/benchmarks.md, "Twelfth round"). Each
measurement runs in a new process: it maps ``--gb`` of anonymous memory, fills it
with a float64 value (the first touch: a page fault per page) and fills it again
(memory already present), in CPU time with the minor page faults and the system time
of the first fill. Modes: ``4k`` (the default pages), ``huge`` (``madvise
(MADV_HUGEPAGE)``: 2 MB transparent huge pages where the kernel allows them),
``populate`` (``MAP_POPULATE``: the kernel faults the mapping in when it is made,
counted with the first touch). The modes run one after another in each of
``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import subprocess
import sys
import time

import numpy as np

MODES = ("4k", "huge", "populate")


def touch(mode: str, gb: float) -> dict:
    """One measurement in this process (see the module's docstring)."""
    n = int(gb * 2**30) // 4096 * 4096
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if mode == "populate":
        flags |= mmap.MAP_POPULATE
    t0, r0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    m = mmap.mmap(-1, n, flags=flags)
    if mode == "huge":
        m.madvise(mmap.MADV_HUGEPAGE)
    a = np.frombuffer(m, dtype=np.float64)
    a.fill(1.0)
    t1, r1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    a.fill(2.0)
    t2 = time.process_time()
    return {
        "mode": mode,
        "gb": n / 2**30,
        "first_s": t1 - t0,
        "faults": r1.ru_minflt - r0.ru_minflt,
        "system_s": r1.ru_stime - r0.ru_stime,
        "second_s": t2 - t1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="memory per measurement (GB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="any of " + ", ".join(MODES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a measurement's own process
    args = parser.parse_args()
    if args.gb <= 0:
        parser.error(f"--gb: expected a positive size in GB, got {args.gb}")
    if args.one:
        print(json.dumps(touch(args.one, args.gb)))
        return
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; expected any of {list(MODES)}")
    print(
        "| round | mode | GB | first touch (s) | s per GB | faults | system (s) | second fill (s) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in range(args.rounds):
        for mode in modes:
            cmd = [sys.executable, __file__, "--one", mode, "--gb", str(args.gb)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            x = json.loads(out.strip().splitlines()[-1])
            print(f"| {r + 1} | {mode} | {x['gb']:.2f} | {x['first_s']:.3f} | "
                  f"{x['first_s'] / x['gb']:.3f} | {x['faults']:,} | {x['system_s']:.3f} | "
                  f"{x['second_s']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
