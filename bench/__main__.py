"""``python -m bench SCENARIO... [--quick]``: run scenarios, print tables, write JSON."""

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback

from bench.report import Result, render, save, table, target_rows

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
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
