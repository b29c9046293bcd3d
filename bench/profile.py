"""Where each service's CPU goes under load: py-spy samples every service process while the
benchmark runs, and the collapsed stacks are summarised per library and per function.

py-spy reads the processes from outside (no code in them changes, `--nonblocking` does not
pause them), so the profile is of the same services the benchmark measures. The raw collapsed
stacks are kept beside the results: speedscope.app and flamegraph.pl read them as they are."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE_HZ = 50  # enough samples for shares over a run of minutes, little cost to the sampled process
# Waiting for work, not doing it: the event loop's poll and idle pool threads.
IDLE = frozenset({"EpollSelector.select", "Condition.wait", "Event.wait"})
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


@dataclass
class Profile:
    samples: int = 0
    by_area: Counter[str] = field(default_factory=Counter)  # self time, per library or Lethe module
    inclusive: Counter[str] = field(default_factory=Counter)  # Lethe functions, incl. their callees


def start(pids: dict[str, int], out_dir: Path, rate_hz: int = RATE_HZ) -> list[subprocess.Popen[bytes]]:
    """One py-spy per process, until stopped with `stop`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(  # noqa: S603  # our own py-spy on our own processes
            [
                *(spy, "record", "--pid", str(pid), "--rate", str(rate_hz), "--nonblocking"),
                *("--format", "raw", "--output", str(out_dir / f"{name}.collapsed")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def stop(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def area_of(path: str) -> str:
    """A frame's file as the thing a reader would change: a library, a stdlib module, or a Lethe
    module."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for root in ("shared/", "services/", "cli/"):
        if path.startswith(root) or f"/{root}" in path:
            tail = root + path.split(root, 1)[1]
            return "lethe:" + tail.removesuffix(".py")
    file = Path(path)
    if file.parent.name in ("asyncio", "json", "logging", "concurrent") or file.stem == "__init__":
        return f"stdlib:{file.parent.name}/{file.stem}"
    return f"stdlib:{file.stem}"


def summarise(collapsed: Path) -> Profile:
    profile = Profile()
    if not collapsed.exists():
        return profile
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [m for f in stack.split(";") if (m := _FRAME.match(f))]
        if not frames or frames[-1]["func"] in IDLE:
            continue
        profile.samples += count
        profile.by_area[area_of(frames[-1]["file"])] += count
        seen = set()
        for frame in frames:
            area = area_of(frame["file"])
            if area.startswith("lethe:"):
                seen.add(f"{area.removeprefix('lethe:')}.{frame['func']}")
        for name in seen:
            profile.inclusive[name] += count
    return profile


def report(profiles: dict[str, Profile], rate_hz: int, top: int = 8) -> dict[str, object]:
    """Per service: the seconds it was seen busy (on a CPU, or runnable and waiting for one:
    on a saturated machine a socket send shows the wait for the woken peer to run), its top
    libraries by self time and top Lethe functions including their callees, as shares."""
    out: dict[str, object] = {}
    for name, profile in profiles.items():
        if not profile.samples:
            continue
        total = profile.samples
        out[name] = {
            "busy_seconds_sampled": round(total / rate_hz, 1),
            "self_by_area_pct": {a: round(100 * n / total, 1) for a, n in profile.by_area.most_common(top)},
            "lethe_inclusive_pct": {
                f: round(100 * n / total, 1) for f, n in profile.inclusive.most_common(top)
            },
        }
    return out
