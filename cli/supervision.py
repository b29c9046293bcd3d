"""The embedded stack's broker supervisor: a thread that starts tansu again when it exits on its
own, and sheds its history when that is safe (cli/shedding.py).

tansu can exit: in the fault suite, just after a restart, under the burst of re-sent messages,
it logged `AlreadyExists` on a partition's first batch and was gone. A supervisor (systemd,
Kubernetes) would restart it; so does the embedded stack, and the services, which notice an
empty broker by their sentinels, put back what it lost. A broker stopped on purpose
(`Stack.restart_broker`, `Stack.stop`) is out of the stack's processes meanwhile, under the
lock, and a paused one has not exited.

The thread must not end before the stack's services are stopped: processes are spawned with
PR_SET_PDEATHSIG (cli/processes.py), which fires when the spawning *thread* exits, so a broker
this thread started dies with it. Hence the loop survives its own errors, and `stop` has two
steps: `halt` (no restart or shed from now on) and, once the services are down, `join`.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cli import carry_over
from cli.processes import wait_for_port
from cli.shedding import Shedder, drained, groups_of, produced, rss_mb
from shared.kafka import ensure_topics
from shared.topics import all_topics

if TYPE_CHECKING:
    from cli.stack import Stack

T = TypeVar("T")
BROKER_CALL_S = 60.0  # longest a supervisor's call to the broker may take (see _run)
SHED_CHECK_S = 2.0  # how often the broker's memory is looked at


def _run(work: Coroutine[Any, Any, T], timeout_s: float = BROKER_CALL_S) -> T:
    """A call to the broker from the supervisor thread, bounded: aiokafka retries a retriable
    coordinator error for ever, and a supervisor stuck on a broker that exited would never
    start it again."""
    return asyncio.run(asyncio.wait_for(work, timeout_s))


class BrokerSupervisor:
    def __init__(self, stack: Stack, shedder: Shedder) -> None:
        self.stack = stack
        self.shedder = shedder
        self.sheds = 0
        self.unread: dict[str, int] | None = None  # by consumer group, at the last look
        self.shed_at = 0.0  # time.monotonic() when the last shed began (after its drain)
        self.lock = threading.RLock()  # held by whoever stops or starts the broker
        self._halted = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="broker-supervisor", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """No restart and no shed from now on; a drain is given up, a shed under way finishes."""
        self._halted.set()
        with self.lock:
            pass

    def join(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=BROKER_CALL_S)

    @property
    def carried_file(self) -> Path:
        return self.stack.config.state_dir / "run" / "dead-letters.json"

    def _loop(self) -> None:
        checked = time.monotonic()
        while not self._done.wait(0.5):
            try:
                with self.lock:
                    broker = self.stack.processes.get("broker")
                    if self._halted.is_set() or broker is None:
                        continue
                    if broker.poll() is not None:
                        print(f"the broker exited ({broker.returncode}): starting it again", file=sys.stderr)
                        self.stack.processes["broker"] = started = self.stack.spawn_broker()
                        # Its topics at once, as a shed does: no client makes one by naming it,
                        # and the services' own recovery waits for their next broker check.
                        wait_for_port(self.stack.config.kafka_port, "broker", started)
                        _run(ensure_topics(self.stack.kafka_settings(), all_topics()))
                        self.shedder.shed()
                    elif self.carried_file.exists():  # a shed's restore failed: again
                        self._restore_carried()
                    elif time.monotonic() - checked >= SHED_CHECK_S:
                        checked = time.monotonic()
                        self._shed_if_due(broker)
            except Exception as exc:  # the thread's end would take the broker it spawned with it
                print(f"broker supervision: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _shed_if_due(self, broker: subprocess.Popen[bytes]) -> None:
        memory = rss_mb(broker.pid)
        if not self.shedder.due(memory, time.monotonic()) or not self._services_ready():
            return
        held = time.monotonic()
        if self._drain_and_shed():
            print(
                f"the broker held {memory:.0f} MB: drained it in {self.shed_at - held:.2f} s (quiet"
                f" after {(self.shedder.quiet_at or held) - held:.2f} s, the groups looked at"
                f" {self.shedder.looks} times) and started it again, empty, in"
                f" {time.monotonic() - self.shed_at:.2f} s",
                file=sys.stderr,
            )
        else:
            self.shedder.put_off(time.monotonic())

    def _drain_and_shed(self) -> bool:
        """Hold intake's outbox relay (shared/relay_hold.py), and shed once nothing has been
        produced for the quiet time and every consumer group has read all there is. Under
        steady load that is the second or so the pipeline takes to drain; submissions
        meanwhile wait in the outbox. Given up after `drain_s`: a group is behind (its
        database down, say) or something else keeps producing."""
        hold = self.stack.relay_hold_file
        hold.touch()
        try:
            total, self.unread = _run(
                drained(
                    self.stack.kafka_settings(),
                    all_topics(),
                    groups_of(self.stack.config.services),
                    self.shedder,
                    self._halted.is_set,
                )
            )
            return total is not None and self.shed(unless_produced_past=total)
        finally:
            hold.unlink(missing_ok=True)

    def shed(self, unless_produced_past: int | None = None) -> bool:
        """Start the broker again, empty, with its dead letters (cli/carry_over.py); the services
        are told (SIGUSR2) and recover as from any broker loss. Not if its end offsets have
        moved past `unless_produced_past` since they were looked at: the last look is taken
        just before the kill, so that what could be produced unread in between is a matter of
        milliseconds (README, Delivery guarantees, says what that may lose)."""
        with self.lock:
            self.shed_at = time.monotonic()
            kafka = self.stack.kafka_settings()
            carried = _run(carry_over.keep(kafka))
            self._signal_services(signal.SIGUSR2)  # before: a recovery that sees the empty broker knows why
            if unless_produced_past is not None:
                now = _run(produced(kafka, all_topics()))
                if now != unless_produced_past:
                    self.shedder.observe(now, time.monotonic())
                    return False
            carried.save(self.carried_file)
            self.stack.restart_broker()
            _run(ensure_topics(kafka, all_topics()))
            self._restore_carried()
            self.shedder.shed()
            self.sheds += 1
            self._signal_services(signal.SIGUSR2)  # after: check the broker now, not at the next check
            return True

    def _restore_carried(self) -> None:
        _run(carry_over.restore(self.stack.kafka_settings(), carry_over.Carried.load(self.carried_file)))
        self.carried_file.unlink()

    def _services_ready(self) -> bool:
        processes = self.stack.processes
        return all(
            s in processes and processes[s].poll() is None and self.stack.ready_file(s).exists()
            for s in self.stack.config.services
        )

    def _signal_services(self, signum: int) -> None:
        """Only to a service that is ready: before its handler is installed, SIGUSR2 would end it
        (one still starting checks the broker when it is up, anyway)."""
        for name, process in list(self.stack.processes.items()):
            if (
                name not in ("broker", "slapd")
                and process.poll() is None
                and self.stack.ready_file(name).exists()
            ):
                process.send_signal(signum)
