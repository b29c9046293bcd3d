"""`make bench-sweep`: latency against offered load on one stack, rate after rate, to find the
highest rate whose p99 stays within the target (2 s). Below saturation latency is the
pipeline's own; past it, latency is queueing and grows with the length of the run.

Each rate gets its own freshly seeded people, so every request finds records to erase."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import RESULTS, measure, start_stack
from bench.stats import percentile
from cli import synthetic
from cli.main import seed_targets
from cli.seed import load

P99_TARGET_S = 2.0


def one_rate(stack: Any, rate: float, count: int, prefix: str | None = None) -> dict[str, Any]:
    prefix = prefix or f"sweep{int(rate * 10)}"
    seeded = synthetic.people(count, prefix=prefix)
    asyncio.run(load(seeded, seed_targets(stack)))
    subjects = [p.subject.model_dump(exclude_none=True) for p in seeded.people]  # type: ignore[union-attr]
    run, wall = asyncio.run(measure(stack, subjects, rate, prefix, timeout_s=120 + count / 10))
    latencies = [run.completed[r] - run.submitted[r] for r in run.completed]
    done = sorted(run.completed.values())
    return {
        "offered_per_s": rate,
        "completed": len(run.completed),
        "submitted": len(run.submitted),
        "throughput_per_s": round((len(done) - 1) / (done[-1] - done[0]), 1) if len(done) > 1 else 0.0,
        "latency_s": {f"p{p}": round(percentile(latencies, p), 3) for p in (50, 95, 99)},
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="5,10,15,20,25", help="Offered rates, requests/s.")
    parser.add_argument("--seconds", type=float, default=20.0, help="How long each rate is offered.")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lethe-sweep-") as tmp:
        stack = start_stack(Path(tmp), "sweep")
        try:
            # Warm up (pools, prepared statements, consumer fetch pacing), not recorded: the
            # first rate would otherwise carry the stack's start-up in its tail.
            one_rate(stack, 5.0, 25, prefix="warmup")
            for rate in rates:
                rows.append(one_rate(stack, rate, int(rate * args.seconds)))
        finally:
            stack.stop()
            shutil.copytree(stack.log_dir, RESULTS / "last-logs", dirs_exist_ok=True)
            asyncio.run(stack.drop_databases())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"sweep-{stamp}.json").write_text(json.dumps(rows, indent=2))
    print("\noffered/s  completed  throughput/s   p50 s   p95 s   p99 s")
    for row in rows:
        lat = row["latency_s"]
        mark = "" if lat["p99"] <= P99_TARGET_S else "   (p99 over the 2 s target)"
        print(
            f"{row['offered_per_s']:>9}  {row['completed']:>4}/{row['submitted']:<4}"
            f"  {row['throughput_per_s']:>12}  {lat['p50']:>6}  {lat['p95']:>6}  {lat['p99']:>6}{mark}"
        )
    print(f"\nresults: {RESULTS}/sweep-{stamp}.json")


if __name__ == "__main__":
    main()
