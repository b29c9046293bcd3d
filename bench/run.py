"""`make bench` / `make soak`: erasure throughput and latency of the whole embedded stack on
this machine, against the limit of the same erasures done directly on the stores.

Open loop: requests are submitted at the target rate whatever the completions, so latency
includes queueing. A request completes when its completion event is read off
`lethe.requests.completed.v1`. Per-stage latency comes from the traces the services write."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from bench import direct, profile, stats
from bench.sampler import Sampler, postgres_pids, slope_mb_per_min
from bench.stats import percentile
from bench.submitter import Submissions, submit_in_process
from cli import synthetic
from cli.main import seed_targets
from cli.processes import free_port
from cli.seed import load
from cli.stack import Stack, StackConfig
from cli.trace import read_spans
from shared import fetching, topics
from shared.kafka import client_options, partitions_of

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Run(Submissions):
    completed: dict[str, float] = field(default_factory=dict)  # time.monotonic() it was read
    from_intake: int = 0  # completions taken from intake's record, not read off the topic


# How often, once the broker has been shed, the run asks intake which requests completed.
INTAKE_LOOK_S = 5.0
LISTENER_STOP_S = 15.0
READER_WAIT_S = 10.0  # longest the completions reader waits on the broker before starting anew


_last_progress = [0.0]


def progress(done: int, total: int, label: str) -> None:
    if time.monotonic() - _last_progress[0] < 0.5 and done < total:
        return
    _last_progress[0] = time.monotonic()
    filled = int(30 * done / max(total, 1))

    sys.stderr.write(f"\r{label:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
    sys.stderr.flush()


async def listen(
    stack: Stack, completed: dict[str, float], prefix: str, total: int, stop: asyncio.Event
) -> None:
    """Every completion of this run's requests (keyed by request id), with when it was read.

    Read without a consumer group, every partition assigned: what is measured is when Lethe's
    completion could be read, not how long a group takes to form. A group's first join on tansu
    takes about half its session timeout (5 s at aiokafka's default), and after each shed of
    the broker's history (cli/shedding.py) a reader's group must form again on the new broker:
    that join, not Lethe, was most of the 6 s each shed seemed to stall completions. After a
    shed the reader starts again from the new broker's start: a position on the old one means
    nothing there, and the tracker publishes again the completions of the seconds before the
    shed, which this reader may have missed."""
    while not stop.is_set():
        sheds = stack.supervisor.sheds
        consumer = AIOKafkaConsumer(
            **client_options(stack.kafka_settings()),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        ours = f"{prefix}-".encode()
        try:
            # Bounded: a broker just restarted can leave a client waiting for good (seen after
            # a shed); a new reader is then started, as after any shed.
            await _bounded(consumer.start())
            partitions = await _bounded(partitions_of(consumer, [topics.REQUESTS_COMPLETED]))
            if not partitions:  # the topic is not made yet on a broker just started
                raise KafkaError("no partitions of the completions topic yet")
            consumer.assign(partitions)
            fetching.read_from_start(consumer, partitions)
            while not stop.is_set() and stack.supervisor.sheds == sheds:
                fetched = await _bounded(fetching.fetch_in_order(consumer, 100))
                for records in fetched.values():
                    now = time.monotonic()
                    for record in records:
                        if record.key and record.key.startswith(ours):
                            completed.setdefault(record.key.decode(), now)
                progress(len(completed), total, "completed")
        except Exception as exc:  # whatever the client raises, the run must go on reading
            sys.stderr.write(f"\ncompletions reader stuck ({type(exc).__name__}): starting another\n")
            await asyncio.sleep(0.2)
        finally:
            # Not waited for: a client on a broker that is gone can take its time to stop.
            _stopping.add(task := asyncio.ensure_future(_bounded(consumer.stop())))
            task.add_done_callback(_stopping.discard)


_stopping: set[asyncio.Future[Any]] = set()
T = TypeVar("T")


async def _bounded(work: Awaitable[T]) -> T:
    """`work`, given READER_WAIT_S. Unlike asyncio.wait_for, which waits for the cancelled work
    to end, and so for ever for a client that does not end on cancellation."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=READER_WAIT_S)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nobody waits for it
        raise TimeoutError
    return task.result()


async def recorded_by_intake(database_url: str, prefix: str, pending: set[str]) -> dict[str, float]:
    """The pending requests intake has recorded as completed, at when they completed (on this
    process's monotonic clock). A completion published on the old broker just before a shed,
    and older than the tracker's republish window, is never on the topic this run reads again:
    intake heard it (or hears the tracker's snapshot of it after its recovery), so its record is
    what says when the request completed."""
    ours = sorted(r for r in pending if r.startswith(f"{prefix}-"))
    if not ours:
        return {}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT request_id, completed_at FROM requests"
            " WHERE request_id = ANY($1::text[])"
            # Older than the tracker's republish window: a reader of the topic would have had it.
            " AND completed_at < now() - interval '10 seconds'",
            ours,
        )
    finally:
        await conn.close()
    offset = time.time() - time.monotonic()
    return {r["request_id"]: r["completed_at"].timestamp() - offset for r in rows}


def stage_latencies(stack: Stack, trace_ids: set[str]) -> tuple[dict[str, Any], float]:
    """From the spans: HTTP handling, each hop through Kafka (send → process), each worker's
    processing, and the tracker's; and how many spans a request makes."""
    spans = [s for s in read_spans(sorted(stack.trace_dir.glob("*.jsonl"))) if s.trace_id in trace_ids]
    by_id = {s.span_id: s for s in spans}
    stages: dict[str, list[float]] = defaultdict(list)
    for span in spans:
        if span.name.startswith("POST /v1/requests") and not span.parent_id:
            stages["intake HTTP"].append(span.duration_ms)
        elif span.name.startswith("process "):
            parent = by_id.get(span.parent_id)
            topic = span.name.split(" ", 1)[1]
            kind = topic.split(".")[2] if topic.startswith("lethe.commands.") else topic
            if parent is not None:
                stages[f"queue → {kind}"].append((span.start - parent.start) / 1e6)
            stages[f"process {kind}"].append(span.duration_ms)
    summary = {
        name: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)}
        for name, v in sorted(stages.items())
    }
    summary["spans per request, by service"] = {
        service: round(n / max(1, len(trace_ids)), 1)
        for service, n in sorted(Counter(s.service for s in spans).items())
    }
    return summary, len(spans) / max(1, len(trace_ids))


def start_stack(tmp: Path, prefix: str) -> Stack:
    config = StackConfig(
        state_dir=tmp,
        http_port=free_port(),
        kafka_port=free_port(),
        ldap_port=free_port(),
        db_prefix=f"lethe_bench_{prefix}",
        extra_env={
            "LETHE_RATE_LIMIT_PER_S": "100000",
            "LETHE_RATE_LIMIT_BURST": "100000",
            "LETHE_LOG_LEVEL": "WARNING",
            "LETHE_DB_POOL_MAX": "10",
        },
    )
    stack = Stack(config)
    stack.start_infrastructure()
    asyncio.run(stack.drop_databases())
    stack.start_services()
    return stack


def sampler_for(stack: Stack, interval_s: float = 2.0) -> Sampler:
    # Looked up at each sample: the stack starts its broker again at a shed (cli/shedding.py).
    groups: dict[str, object] = {
        name: (lambda n=name: [stack.processes[n].pid] if n in stack.processes else [])
        for name in stack.processes
    }
    groups["postgres"] = postgres_pids
    # This process (the listener) and the submitting one.
    groups["load generator"] = lambda: [os.getpid(), *(c.pid or 0 for c in multiprocessing.active_children())]
    return Sampler(groups, interval_s)  # a sample costs ~0.1 CPU-s (PSS of every PostgreSQL backend)


async def measure(
    stack: Stack, subjects: list[dict[str, Any]], rate: float, prefix: str, timeout_s: float
) -> tuple[Run, float]:
    completed: dict[str, float] = {}
    stop = asyncio.Event()
    listener = asyncio.create_task(listen(stack, completed, prefix, len(subjects), stop))
    await asyncio.sleep(3)  # the listener joins its group
    start = time.monotonic()
    bodies = [
        {"request_id": f"{prefix}-{i}", "type": "erasure", "identity_verified": True, "subject": subject}
        for i, subject in enumerate(subjects)
    ]
    sent = await submit_in_process(stack.api_url, stack.secrets.admin_token, bodies, rate)
    deadline = time.monotonic() + timeout_s
    recorded: dict[str, float] = {}
    looked = time.monotonic()
    while set(sent.submitted) - set(completed) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if stack.supervisor.sheds and time.monotonic() - looked > INTAKE_LOOK_S:
            recorded |= await recorded_by_intake(
                stack.database_url("intake"), prefix, set(sent.submitted) - set(completed)
            )
            for request_id, at in recorded.items():
                completed.setdefault(request_id, at)
            looked = time.monotonic()
    stop.set()
    try:
        # Each of the reader's calls is bounded, but a reader starting anew on a broker just
        # shed must not hold the run past its end: what it read is already in `completed`.
        await asyncio.wait_for(listener, LISTENER_STOP_S)
    except TimeoutError:
        sys.stderr.write("\ncompletions reader still busy at the end: stopped\n")
    run = Run(**vars(sent), completed={r: t for r, t in completed.items() if r in sent.submitted})
    run.from_intake = sum(1 for r, t in run.completed.items() if recorded.get(r) == t)
    sys.stderr.write("\n")
    return run, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="Target submissions per second.")
    parser.add_argument(
        "--soak-minutes", type=float, default=0.0, help="Soak instead: a steady rate this long."
    )
    parser.add_argument("--no-direct", action="store_true", help="Skip the direct-store baseline.")
    parser.add_argument(
        "--profile", action="store_true", help="Sample every service with py-spy while it runs."
    )
    parser.add_argument(
        "--holds",
        type=int,
        default=0,
        help="Legal holds in force during the run, on nobody in the stores: each erasure still has"
        " to look in each store for what they cover.",
    )
    parser.add_argument(
        "--given",
        choices=("all", "email"),
        default="all",
        help="What each request names: every identifier, or the e-mail alone (the search learns the rest).",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    soak = args.soak_minutes > 0
    count = int(args.rate * args.soak_minutes * 60) if soak else args.requests
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        stack = start_stack(Path(tmp), "soak" if soak else "run")
        try:
            if soak:  # nobody to find: the pipeline's full path, without seeding tens of thousands
                subjects = [
                    {"customer_id": f"SOAK-{i}", "emails": [f"soak{i}@example.net"]} for i in range(count)
                ]
            else:
                seeded = synthetic.people(count, prefix="bench")
                asyncio.run(load(seeded, seed_targets(stack)))
                subjects = [p.subject.model_dump(exclude_none=True) for p in seeded.people]  # type: ignore[union-attr]
                if args.given == "email":
                    subjects = [{"emails": s["emails"]} for s in subjects]
            place_holds(stack, args.holds)
            sampler = sampler_for(stack, 5.0 if soak else 2.0)
            sampler.start()
            profile_dir = RESULTS / f"profile-{stamp}"
            if args.profile:
                profile_dir.mkdir()
                services = {n: p.pid for n, p in stack.processes.items() if n not in ("broker", "slapd")}
                spies = profile.start(services, profile_dir)
            run, wall = asyncio.run(
                measure(stack, subjects, args.rate, "soak" if soak else "bench", timeout_s=120 + count / 20)
            )
            sampler.stop()
            result = summarise(stack, run, wall, args.rate, sampler, soak)
            result["identity_search"] = asyncio.run(search_cost(stack)) | {"given": args.given}
            result["holds_in_force"] = args.holds
            if args.profile:
                profile.stop(spies)
                result["profile"] = profile.report(
                    {n: profile.summarise(profile_dir / f"{n}.collapsed") for n in services},
                    rate_hz=profile.RATE_HZ,
                )
            if not soak and not args.no_direct:
                result |= direct_baseline(stack, count, result["throughput_per_s"])
        finally:
            stack.stop()
            shutil.copytree(stack.log_dir, RESULTS / "last-logs", dirs_exist_ok=True)  # for a post-mortem
            asyncio.run(stack.drop_databases())
    name = f"{'soak' if soak else 'bench'}-{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(run_points(result), RESULTS / f"{name}.png")
    print_table(result)
    print(f"\nresults: {RESULTS / name}.json and .png")


def place_holds(stack: Stack, count: int) -> None:
    """Through intake's API, as Legal would; each answered 201 once the workers are bound by it."""
    headers = {"Authorization": f"Bearer {stack.secrets.admin_token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api:
        for n in range(count):
            subject = {"customer_id": f"HELD-{n}", "emails": [f"held{n}@example.org"]}
            body = {"subject": subject, "case_reference": f"BENCH-{n}", "reason": "benchmark"}
            answer = api.post("/v1/holds", json=body)
            if answer.status_code != 201:
                raise SystemExit(f"placing hold {n}: {answer.status_code} {answer.text}")


def direct_baseline(stack: Stack, count: int, throughput: float) -> dict[str, Any]:
    """The same erasures done directly on the stores, after the run, with Lethe's services
    stopped; a baseline that fails is reported, not allowed to lose the run's results."""
    stack.stop_services()  # the stores alone: their connections and CPU are the baseline's
    baseline = synthetic.people(count, prefix="direct")
    targets = seed_targets(stack)
    try:
        asyncio.run(load(baseline, targets))
        per_s = asyncio.run(
            direct.run(
                baseline.people,
                targets.database_urls,
                targets.ldap,
                stack.recordings_dir,
                stack.secrets.suppression_key,
            )
        )
    except (OSError, asyncpg.PostgresError) as exc:
        return {"direct_store_error": f"{type(exc).__name__}: {exc}"}
    return {"direct_store_limit_per_s": round(per_s, 1), "ratio_to_direct": round(throughput / per_s, 3)}


async def search_cost(stack: Stack) -> dict[str, float]:
    """What identity expansion cost: rounds and commands per request, review items."""
    conn = await asyncpg.connect(stack.database_url("tracker"))
    try:
        row = await conn.fetchrow(
            "SELECT avg(round) AS rounds, max(round) AS most, avg(round * (SELECT count(*)"
            " FROM saga_systems s WHERE s.request_id = g.request_id)) AS commands,"
            " avg(jsonb_array_length(reviews)) AS reviews FROM sagas g"
        )
    finally:
        await conn.close()
    return {
        "rounds_per_request": round(float(row["rounds"] or 0), 2),
        "most_rounds": int(row["most"] or 0),
        "commands_per_request": round(float(row["commands"] or 0), 2),
        "review_items_per_request": round(float(row["reviews"] or 0), 3),
    }


def summarise(
    stack: Stack, run: Run, wall: float, rate: float, sampler: Sampler, soak: bool
) -> dict[str, Any]:
    latencies = [(run.completed[r] - run.submitted[r]) for r in run.completed]
    done_times = sorted(run.completed.values())
    first = min(run.submitted.values())
    sustained = (len(done_times) - 1) / (done_times[-1] - done_times[0]) if len(done_times) > 1 else 0.0
    headers = {"Authorization": f"Bearer {stack.secrets.admin_token}"}
    sample_ids = sorted(run.completed)[:: max(1, len(run.completed) // 200)]
    api = httpx.Client(base_url=stack.api_url, headers=headers)  # one client: each costs an SSL context
    trace_ids = {api.get(f"/v1/requests/{r}").json().get("trace_id") for r in sample_ids}
    stages, spans_per_request = stage_latencies(stack, {t for t in trace_ids if t})
    # A request that never completed is a finding, not noise: say where it stands.
    incomplete = []
    for rid in sorted(set(run.submitted) - set(run.completed))[:20]:
        body = api.get(f"/v1/requests/{rid}").json()
        waiting = [p["system"] for p in body.get("progress", []) if p.get("state") == "dispatched"]
        incomplete.append({"request_id": rid, "status": body.get("status"), "waiting_on": waiting})
    usage = {
        name: {
            "cpu_seconds": round(u.cpu_seconds, 2),
            "peak_rss_mb": round(u.peak_rss / 2**20, 1),
            "rss_slope_mb_per_min": round(slope_mb_per_min(u.samples), 3),
        }
        for name, u in sampler.usage.items()
    }
    return {
        "mode": "soak" if soak else "bench",
        "target_rate_per_s": rate,
        "submitted": len(run.submitted),
        "completed": len(run.completed),
        "completions_from_intake": run.from_intake,
        "submit_errors": dict(run.errors),
        "machine_cpu_busy": round(sampler.machine_busy, 3),
        "machine_cpu_stolen": round(sampler.machine_steal, 3),
        "wall_s": round(wall, 1),
        "throughput_per_s": round(sustained, 1),
        "latency_s": {p: round(percentile(latencies, float(p[1:])), 3) for p in ("p50", "p95", "p99")}
        | {"max": round(max(latencies, default=float("nan")), 3)},
        "http_submit_ms": {
            "p50": round(percentile(run.http_ms, 50), 1),
            "p99": round(percentile(run.http_ms, 99), 1),
            "max": round(max(run.http_ms, default=float("nan")), 1),
        },
        "submissions_shed_503": run.shed,
        "cpu_ms_per_request": stats.cpu_ms_per_request(
            {name: u["cpu_seconds"] for name, u in usage.items()}, len(run.completed)
        ),
        "longest_stall_s": round(stats.longest_stall(run.submitted, run.completed), 2),
        "latency_windows": stats.windows(run.submitted, run.completed, 300.0 if soak else 30.0),
        "stages_ms": stages,
        "spans_per_request": round(spans_per_request, 1),
        "incomplete": incomplete,
        "usage": usage,
        "points": [
            [round(run.submitted[r] - first, 3), round(run.completed[r] - run.submitted[r], 3)]
            for r in run.completed
        ],
    }


def run_points(result: dict[str, Any]) -> list[list[float]]:
    points: list[list[float]] = result["points"]
    return points


def plot(points: list[list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    xs, ys = zip(*points, strict=True)
    top.scatter(xs, ys, s=4)
    top.set_ylabel("submit → completed (s)")
    top.set_title("Latency over time")
    done = sorted(x + y for x, y in points)
    seconds = int(max(done)) + 1
    per_second = [0] * seconds
    for t in done:
        per_second[int(t)] += 1
    bottom.plot(range(seconds), per_second)
    bottom.set_ylabel("completed / s")
    bottom.set_xlabel("seconds since the first submission")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['mode']}: {result['completed']}/{result['submitted']} completed at a target of "
        f"{result['target_rate_per_s']}/s in {result['wall_s']} s"
    )
    print(f"  sustained throughput   {result['throughput_per_s']} requests/s")
    if result.get("completions_from_intake"):
        print(f"  completions not read   {result['completions_from_intake']} (taken from intake's record)")
    lat = result["latency_s"]
    print(
        f"  submit → completed     p50 {lat['p50']} s  p95 {lat['p95']} s  p99 {lat['p99']} s"
        f"  max {lat['max']} s"
    )
    http = result["http_submit_ms"]
    print(
        f"  POST /v1/requests      p50 {http['p50']} ms  p99 {http['p99']} ms  max {http['max']} ms;"
        f" {result['submissions_shed_503']} shed with 503 and sent again"
    )
    print(
        f"  CPU per request        {result['cpu_ms_per_request']} ms (services, broker, PostgreSQL);"
        f" longest stall {result['longest_stall_s']} s"
    )
    for window in result["latency_windows"]:
        print(
            f"  from {window['from_s']:>5} s            p50 {window['p50']} s  p99 {window['p99']} s"
            f"  ({window['completed']} completed, {window['not_completed']} not)"
        )
    search = result.get("identity_search")
    if search:
        print(
            f"  identity search        given {search['given']}: {search['rounds_per_request']} rounds,"
            f" {search['commands_per_request']} commands, {search['review_items_per_request']} review items"
            f" per request (at most {search['most_rounds']} rounds)"
        )
    if result.get("holds_in_force"):
        print(f"  holds in force         {result['holds_in_force']} (on nobody in the stores)")
    for item in result["incomplete"]:
        print(f"  not completed          {item}")
    if result["submit_errors"]:
        print(f"  submissions refused    {result['submit_errors']}")
    print(
        f"  machine CPU busy       {100 * result['machine_cpu_busy']:.0f}% of {os.cpu_count()} cores"
        f" ({100 * result['machine_cpu_stolen']:.0f}% stolen by the hypervisor);"
        f" {result['spans_per_request']} spans per request"
    )
    if "direct_store_limit_per_s" in result:
        print(
            f"  direct-store limit     {result['direct_store_limit_per_s']} erasures/s "
            f"(Lethe reaches {result['ratio_to_direct']:.2f} of it)"
        )
    stages = dict(result["stages_ms"])
    print(f"  spans per request      {stages.pop('spans per request, by service', {})}")
    print("  stage                         p50 ms    p95 ms")
    for stage, v in stages.items():
        print(f"  {stage:<28} {v['p50']:>7.1f}  {v['p95']:>8.1f}")
    print("  process              cpu s   peak MB   slope MB/min")
    for name, u in result["usage"].items():
        print(f"  {name:<18} {u['cpu_seconds']:>7}  {u['peak_rss_mb']:>8}  {u['rss_slope_mb_per_min']:>10}")
    for name, p in result.get("profile", {}).items():
        print(f"\n  {name}: busy {p['busy_seconds_sampled']} s sampled; self time by library / module:")
        print("    " + ", ".join(f"{a} {v}%" for a, v in p["self_by_area_pct"].items()))
        print("    Lethe functions, with callees:")
        for func, v in p["lethe_inclusive_pct"].items():
            print(f"      {v:>5}%  {func}")


if __name__ == "__main__":
    main()
