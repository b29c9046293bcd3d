"""What a run's timings say, as pure functions of them: percentiles, the longest stall, latency
per window, CPU per request. Kept apart from the load generator so that they are unit-tested."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Not the services': the load generator's CPU is the benchmark's own cost.
NOT_LETHE = frozenset({"load generator"})


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def longest_stall(submitted: Mapping[str, float], completed: Mapping[str, float]) -> float:
    """The longest stretch, in seconds, with a request pending and none completing. A stretch
    starts at a completion after which requests were still pending, or at a submission that found
    none pending; it ends at the next completion. A request that never completed keeps the
    stretch open until the last event of the run."""
    events = sorted(
        [(t, 1) for t in submitted.values()] + [(t, -1) for r, t in completed.items() if r in submitted]
    )
    longest, pending, since = 0.0, 0, None
    for moment, change in events:
        if change < 0 and since is not None:
            longest = max(longest, moment - since)
            since = None
        pending += change
        if pending > 0 and since is None:
            since = moment
    if since is not None and events:
        longest = max(longest, events[-1][0] - since)
    return longest


def windows(
    submitted: Mapping[str, float], completed: Mapping[str, float], seconds: float
) -> list[dict[str, Any]]:
    """Latency percentiles of the requests submitted in each window of `seconds` (a soak's
    degradation shows as later windows getting worse); requests not completed are counted."""
    if not submitted:
        return []
    first = min(submitted.values())
    by_window: dict[int, list[float]] = {}
    missing: dict[int, int] = {}
    for rid, at in submitted.items():
        index = int((at - first) // seconds)
        if rid in completed:
            by_window.setdefault(index, []).append(completed[rid] - at)
        else:
            missing[index] = missing.get(index, 0) + 1
    return [
        {
            "from_s": round(index * seconds),
            "completed": len(by_window.get(index, [])),
            "not_completed": missing.get(index, 0),
            **{p: round(percentile(by_window.get(index, []), float(p[1:])), 3) for p in ("p50", "p99")},
        }
        for index in sorted(set(by_window) | set(missing))
    ]


def cpu_ms_per_request(cpu_seconds: Mapping[str, float], completed: int) -> float:
    """CPU of the services, the broker, slapd and PostgreSQL over the run, per completed request."""
    total = sum(v for name, v in cpu_seconds.items() if name not in NOT_LETHE)
    return round(1000 * total / completed, 1) if completed else float("nan")
