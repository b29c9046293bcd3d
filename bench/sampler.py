"""CPU and memory of every process of the stack, from /proc: the services, the broker, slapd
and the PostgreSQL server (all its backends together)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _rss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's shared buffers) counted once overall."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class Usage:
    peak_rss: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, rss)
    # CPU seconds of each process of the group, first and last seen: a process can be replaced
    # mid-run (the embedded broker at a shed), and its successor's clock starts at zero.
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)

    @property
    def cpu_seconds(self) -> float:
        """Used between the first and the last sample (by a process started mid-run, since the
        sample after its start)."""
        return sum(last - self.cpu_first[pid] for pid, last in self.cpu_last.items())

    def record(self, cpu: dict[int, float]) -> None:
        for pid, seconds in cpu.items():
            self.cpu_first.setdefault(pid, seconds)
            self.cpu_last[pid] = seconds


class Sampler:
    """Samples every `interval_s` in a thread; `groups` maps a name to a function giving pids."""

    def __init__(self, groups: dict[str, object], interval_s: float = 1.0) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self.usage = {name: Usage() for name in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._machine_start = (0, 0, 0)
        self.machine_busy = 0.0
        self.machine_steal = 0.0

    def _measure(self, name: str) -> tuple[dict[int, float], int]:
        cpu, rss = {}, 0
        for pid in self.groups[name]():  # type: ignore[operator]
            try:
                cpu[pid] = _cpu_seconds(pid)
                rss += _rss_bytes(pid)
            except OSError:
                continue
        return cpu, rss

    def start(self) -> None:
        self._machine_start = _machine_jiffies()
        for name in self.groups:
            self.usage[name].record(self._measure(name)[0])
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic() - self._t0
        for name, usage in self.usage.items():
            cpu, rss = self._measure(name)
            usage.record(cpu)
            usage.peak_rss = max(usage.peak_rss, rss)
            usage.samples.append((now, rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        end = _machine_jiffies()
        busy, steal, total = (e - s for e, s in zip(end, self._machine_start, strict=True))
        self.machine_busy = busy / total if total else 0.0
        self.machine_steal = steal / total if total else 0.0


def _machine_jiffies() -> tuple[int, int, int]:
    """(busy, stolen, total) CPU time of the whole machine from /proc/stat: whether it had any
    to spare, and how much the hypervisor took for other guests (it varies from run to run)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return sum(values) - idle, steal, sum(values)


def slope_mb_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time: memory that grows without bound shows here."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return (cov / var) * 60 / 2**20 if var else 0.0
