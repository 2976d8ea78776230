"""``python -m bench SCENARIO... [--quick]``: run scenarios, print tables, write JSON."""

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback

import psutil

from bench.report import Result, machine, render, save, table, target_rows

#: A scenario after another starts once the CPUs are at most this busy (percent over a
#: second), or after :data:`QUIET_WAIT_S`: the previous one's processes wind down, and
#: RabbitMQ and PostgreSQL finish what it left them (a vhost's queues deleted, a dropped
#: database's checkpoint), in their own time rather than in the next one's numbers.
QUIET_PERCENT = 20.0
QUIET_WAIT_S = 20.0

#: ``make bench`` runs these, in this order.
ALL = ["enqueue", "drain", "multistep", "latency", "notifier", "memory", "recovery"]
CHOICES = [*ALL, "soak", "all"]


def main(argv: list[str] | None = None) -> int:
    """Run the named scenarios; exit 1 if one crashed (a missed target is not a crash)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="+", choices=CHOICES)
    parser.add_argument("--quick", action="store_true", help="small N, short runs (smoke)")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    parser.add_argument("--rate", type=float, default=100.0, help="soak jobs per second")
    args = parser.parse_args(argv)
    names = [n for s in args.scenarios for n in (ALL if s == "all" else [s])]
    results: list[Result] = []
    crashed: list[str] = []
    started = time.monotonic()
    # The host can change between runs (a VM): name it above the tables, not only in
    # the JSON, so a pasted table carries it.
    m = machine()
    print(
        f"machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, "
        f"Python {m['python']}, Linux {m['kernel']}, commit {m['git']}",
        flush=True,
    )
    for i, name in enumerate(names):
        print(f"== {name}", file=sys.stderr, flush=True)
        quiet = wait_quiet() if i else None
        module = importlib.import_module(f"bench.scenarios.{name}")
        t0 = time.monotonic()
        try:
            kwargs: dict[str, object] = {"quick": args.quick}
            if name == "soak":
                kwargs |= {"minutes": args.minutes, "rate": args.rate}
            if "suite" in inspect.signature(module.run).parameters:
                kwargs["suite"] = names == ALL
            produced: list[Result] = module.run(**kwargs)
        except Exception:  # report, clean up (done by the scenario) and go on
            traceback.print_exc()
            crashed.append(name)
            produced = [Result(name, notes=["crashed: see the traceback above"])]
        for result in produced:
            result.wall_s = time.monotonic() - t0
            if quiet is not None:
                waited, busy = quiet
                result.notes.append(
                    f"started after {waited:.0f} s waiting for quiet CPUs ({busy:.0f}% busy)"
                )
            result.load.append(round(os.getloadavg()[0], 2))
            print(render(result), flush=True)
            print(flush=True)
        results += produced
        save(produced, name)
    if len(names) > 1:
        targets = [t for r in results for t in r.targets]
        print(f"## targets ({time.monotonic() - started:.0f} s in all)")
        print(table(target_rows(targets)))
        path = save(results, "bench" if names == ALL else "-".join(names))
        print(f"\nresults: {path}")
    return 1 if crashed else 0


def wait_quiet() -> tuple[float, float]:
    """Wait (bounded) until the CPUs are quiet; return the seconds waited and how busy
    they were in the last second."""
    started = time.monotonic()
    busy = psutil.cpu_percent(interval=1.0)
    while busy > QUIET_PERCENT and time.monotonic() - started < QUIET_WAIT_S:
        busy = psutil.cpu_percent(interval=1.0)
    return time.monotonic() - started, busy


if __name__ == "__main__":
    sys.exit(main())
