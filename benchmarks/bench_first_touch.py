"""What the first write of fresh memory costs on this machine, by page size.

    python benchmarks/bench_first_touch.py --gb 2 --rounds 2
    python benchmarks/bench_first_touch.py --gb 2 --rounds 3 --hold 12 --modes 4k,populate

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

``--hold GB`` has each measuring process write that much memory first and keep it,
as a process that has grown does. On a virtual machine whose kernel reports free
pages to its host (Linux's free page reporting, as on the machines of the nineteenth
and twentieth rounds: ``/sys/module/page_reporting``), the host takes back the memory
of pages freed for a while, and a page it has taken back costs a fault on the host
as well when it is next touched: a small process gets pages freed moments ago, a
large one runs out of them. The table then also gives the memory the kernel had
reported to the host before each measurement (MB, over the machine's uptime).
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("4k", "huge", "populate")


REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def reported_mb() -> float | None:
    """The memory this machine's kernel has reported free to its host since boot (MB),
    or ``None`` where it does not report free pages."""
    try:
        return int(REPORTED.read_text()) / 1024
    except (OSError, ValueError):
        return None


def touch(mode: str, gb: float, hold: float = 0.0) -> dict:
    """One measurement in this process (see the module's docstring)."""
    held = None
    if hold > 0:
        held = np.empty(int(hold * 2**30) // 8)
        held.fill(1.0)
    reported = reported_mb()
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
        "reported_mb": reported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="memory per measurement (GB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--hold", type=float, default=0.0, help="GB each measuring process writes and keeps first"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="any of " + ", ".join(MODES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a measurement's own process
    args = parser.parse_args()
    if args.gb <= 0:
        parser.error(f"--gb: expected a positive size in GB, got {args.gb}")
    if args.hold < 0:
        parser.error(f"--hold: expected a size in GB, 0 or more, got {args.hold}")
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive count, got {args.rounds}")
    if args.one:
        print(json.dumps(touch(args.one, args.gb, args.hold)))
        return
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {unknown}; expected any of {list(MODES)}")
    reports = reported_mb() is not None
    print(f"GB held first by each process: {args.hold:g}")
    head = (
        "| round | mode | GB | first touch (s) | s per GB | faults | system (s) | second fill (s) |"
    )
    print(head + (" reported to the host (MB) |" if reports else ""))
    print("|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if reports else ""))
    for r in range(args.rounds):
        for mode in modes:
            cmd = [sys.executable, __file__, "--one", mode, "--gb", str(args.gb),
                   "--hold", str(args.hold)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            x = json.loads(out.strip().splitlines()[-1])
            extra = f" {x['reported_mb']:,.0f} |" if reports else ""
            print(f"| {r + 1} | {mode} | {x['gb']:.2f} | {x['first_s']:.3f} | "
                  f"{x['first_s'] / x['gb']:.3f} | {x['faults']:,} | {x['system_s']:.3f} | "
                  f"{x['second_s']:.3f} |{extra}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
