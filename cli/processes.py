"""Child processes that die with their parent and stop in order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If the parent is killed, even with SIGKILL, the kernel stops this process: nothing is
    left behind (the signal is sent when the thread that started this process ends)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, nice: int = 0
) -> subprocess.Popen[bytes]:
    """`nice`: added to the child's nice value (cli/priority.py)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / f"{name}.log").open("ab")

    def before_exec() -> None:
        die_with_parent()
        os.setpgid(0, 0)  # our own group: a Ctrl-C reaches the supervisor, which stops us in order
        if nice:
            os.nice(nice)

    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=before_exec,
    )


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_HANDED_OUT: set[int] = set()
LOWEST_PORT = 10_000


def _outgoing_ports_start() -> int:
    """Where the kernel's range of local ports for outgoing connections starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port nothing is bound to, for a service about to start. Chosen below the kernel's range
    for outgoing connections: a port the kernel hands out (binding port 0) can be taken as the
    local end of any connection made before the service binds it, which happened (intake's HTTP
    port, a metrics port: the whole session stack then failed to start). Never the same port
    twice in one process, since a port handed out is not bound until its service starts."""
    top = _outgoing_ports_start()
    for _ in range(500 if top > LOWEST_PORT + 1000 else 0):
        port = random.randrange(LOWEST_PORT, top)  # noqa: S311 - a port, not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # no room below the range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(
    port: int, what: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f}s")
        time.sleep(0.05)
