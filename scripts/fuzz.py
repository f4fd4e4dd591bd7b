"""Run the fuzz targets of `p2pmodel.testing.fuzz` for many cases and report, per target: the
cases run, the crashes (each kept with its input, the run goes on), and the slowest case.

Hypothesis generates the cases (generation only: no shrinking, no example database); a crash
is a `Crash` raised by the target's check, i.e. the code under test raised something else than
its own one-line error, logged a bug, or accepted what the rules refuse.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from p2pmodel.testing.fuzz import TARGETS, Crash, Target


def fuzz(target: Target, cases: int, rng_seed: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"cases": 0, "crashes": [], "slowest": (0.0, None)}

    @seed(rng_seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(target.strategy)
    def run(case: Any) -> None:
        t0 = time.perf_counter()
        try:
            target.check(case)
        except Crash as e:
            if len(stats["crashes"]) < 20:
                stats["crashes"].append((str(e), repr(case)[:300]))
            else:
                stats["crashes"].append(None)
        took = time.perf_counter() - t0
        stats["cases"] += 1
        if took > stats["slowest"][0]:
            stats["slowest"] = (took, repr(case)[:120])

    t0 = time.perf_counter()
    run()
    stats["seconds"] = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000, help="cases per target (100000)")
    p.add_argument("--target", action="append", choices=sorted(TARGETS), help="(default: all)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (0)")
    args = p.parse_args(argv)
    crashed = False
    print("| target | cases | crashes | seconds | slowest case s | slowest input |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name in args.target or sorted(TARGETS):
        s = fuzz(TARGETS[name], args.cases, args.seed)
        slow_s, slow_case = s["slowest"]
        print(
            f"| {name} | {s['cases']} | {len(s['crashes'])} | {s['seconds']:.0f} "
            f"| {slow_s:.4f} | `{slow_case}` |",
            flush=True,
        )
        for crash in s["crashes"]:
            if crash is not None:
                crashed = True
                print(f"  crash: {crash[0]}\n    input: {crash[1]}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
