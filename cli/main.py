"""The `lethe` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from cli import dlq as dead_letters
from cli import keys as key_commands
from cli import notices as notice_commands
from cli import reviews as review_commands
from cli.client import ApiClient, Credentials, api_url, fail, find_credentials
from cli.render import report_text
from cli.seed import SeedFile, SeedTargets, load, read
from cli.stack import Stack, StackConfig
from cli.trace import read_spans, request_traces, waterfall, without_sql
from services.directory.ldap import LdapSettings
from shared.codec import describe_validation_error
from shared.settings import KafkaSettings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Lethe: GDPR erasure and restriction across a company's systems.",
)


def state_dir() -> Path:
    """Where `lethe up` keeps its secrets, logs and traces (read when used, not at import)."""
    return Path(os.environ.get("LETHE_STATE_DIR", ".lethe"))


DEMO_SEED = Path(__file__).resolve().parent.parent / "deploy" / "seed" / "demo.json"


@app.callback()
def _global_options(
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="API token for this command. Without it: LETHE_TOKEN, else the admin token"
            " `lethe up` keeps in .lethe/secrets.json.",
        ),
    ] = None,
) -> None:
    """Lethe: GDPR erasure and restriction across a company's systems."""
    _token_option.set(token)


_token_option: ContextVar[str | None] = ContextVar("token_option", default=None)


def api() -> ApiClient:
    return ApiClient(api_url(), find_credentials(_token_option.get(), state_dir()))


def seed_targets(stack: Stack) -> SeedTargets:
    env = stack.env()
    return SeedTargets(
        database_urls={s: stack.database_url(s) for s in ("billing", "crm", "recordings", "mailing")},
        ldap=LdapSettings(
            url=env["LETHE_LDAP_URL"],
            bind_dn=env["LETHE_LDAP_BIND_DN"],
            password=env["LETHE_LDAP_PASSWORD"],
            base_dn=env["LETHE_LDAP_BASE_DN"],
        ),
        recordings_dir=stack.recordings_dir,
        suppression_key=stack.secrets.suppression_key,
    )


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


@app.command()
def up(seed: Annotated[bool, typer.Option(help="Load the demo data first.")] = True) -> None:
    """Start the whole system on this machine and stay in the foreground until Ctrl-C."""
    stack = Stack(StackConfig.from_env(state_dir()))
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    restarts: dict[str, float] = {}
    try:
        stack.start_infrastructure()
        if seed:
            asyncio.run(load(read(DEMO_SEED), seed_targets(stack)))
        stack.start_services()
        typer.echo(f"Lethe is up: API {stack.api_url} (browse it at {stack.api_url}/docs)")
        typer.echo(f"logs in {stack.log_dir}; Ctrl-C stops everything")
        typer.echo(
            f"admin API token: 'admin_token' in {stack.config.state_dir / 'secrets.json'} "
            "(the lethe command uses it; `lethe tokens create --role R` makes others)"
        )
        while True:
            time.sleep(0.5)
            for service in stack.dead_services():  # restart like an orchestrator would
                if time.monotonic() - restarts.get(service, 0.0) > 2.0:
                    typer.echo(f"{service} exited; restarting", err=True)
                    restarts[service] = time.monotonic()
                    stack.start_service(service)
    except _Interrupted:
        typer.echo("stopping…")
    except RuntimeError as exc:
        typer.echo(f"lethe up: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()


@app.command()
def demo(timeout_s: Annotated[float, typer.Option(help="How long to wait for completion.")] = 120.0) -> None:
    """Start the stack with demo data, erase the demo subjects, print the reports, stop."""
    from cli.processes import free_port

    with tempfile.TemporaryDirectory(prefix="lethe-demo-") as tmp:
        config = StackConfig(
            state_dir=Path(tmp),
            http_port=free_port(),
            kafka_port=free_port(),
            ldap_port=free_port(),
            db_prefix="lethe_demo",
        )
        config.postgres_url = os.environ.get("LETHE_POSTGRES_URL", config.postgres_url)
        stack = Stack(config)
        try:
            stack.start_infrastructure()
            asyncio.run(stack.drop_databases())
            seed_file = read(DEMO_SEED)
            result = asyncio.run(load(seed_file, seed_targets(stack)))
            typer.echo(f"seeded demo data: {result.rows}")
            stack.start_services()
            ok = _run_demo_requests(stack.api_url, stack.secrets.admin_token, seed_file, timeout_s)
        except RuntimeError as exc:
            typer.echo(f"lethe demo: {exc}", err=True)
            ok = False
        finally:
            stack.stop()
    raise typer.Exit(0 if ok else 1)


def _run_demo_requests(base: str, token: str, seed_file: SeedFile, timeout_s: float) -> bool:
    with ApiClient(base, Credentials(token, "the demo stack's own admin token")) as client:
        # Legal holds one customer's call recordings: the report will say they were kept, and why.
        hold = client.post(
            "/v1/holds",
            json={
                "subject": {"customer_id": "C-1001"},
                "systems": ["recordings"],
                "case_reference": "LIT-DEMO-1",
                "reason": "Demo: complaint under investigation",
            },
        )
        if hold.status_code != 201:
            raise fail(f"placing the demo hold: HTTP {hold.status_code}: {hold.text}")
        typer.echo(f"placed hold LIT-DEMO-1 on customer C-1001's recordings ({hold.json()['id']})")
        ids = []

        for person in seed_file.people:
            if person.subject is None:
                continue
            request_id = f"demo-{person.label}-{int(time.time())}"
            body = {
                "request_id": request_id,
                "type": "erasure",
                "identity_verified": True,
                "subject": person.subject.model_dump(exclude_none=True),
            }
            response = client.post("/v1/requests", json=body)
            if response.status_code != 202:
                raise fail(f"submitting {request_id}: HTTP {response.status_code}: {response.text}")
            typer.echo(
                f"submitted {request_id}: {response.json()['status']}, deadline {response.json()['deadline']}"
            )
            ids.append(request_id)
        reports = [_wait_final(client, rid, timeout_s) for rid in ids]
    for report in reports:
        typer.echo("")
        typer.echo(report_text(report) if report else "(no report: timed out)")
    return all(r and r["status"] in ("completed", "completed_with_exceptions") for r in reports)


def _wait_final(client: httpx.Client, request_id: str, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"/v1/requests/{request_id}").json()["status"]
        if status in ("completed", "completed_with_exceptions", "failed"):
            report: dict[str, Any] = client.get(f"/v1/requests/{request_id}/report").json()
            return report
        time.sleep(0.1)
    return None


@app.command("seed")
def seed_command(
    file: Annotated[Path | None, typer.Argument(help="Seed file (JSON).")] = None,
    schema: Annotated[bool, typer.Option(help="Print the seed file's JSON Schema and exit.")] = False,
) -> None:
    """Load people and their records into the stores of the running stack (`lethe up`)."""
    if schema:
        typer.echo(json.dumps(SeedFile.model_json_schema(), indent=2))
        return
    if file is None:
        raise typer.BadParameter("give a seed file, or --schema")
    try:
        seed_file = read(file)
    except ValidationError as exc:
        field, reason = describe_validation_error(exc)
        typer.echo(f"{file}: {field}: {reason}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(2) from None
    stack = Stack(StackConfig.from_env(state_dir()))
    result = asyncio.run(load(seed_file, seed_targets(stack)))
    typer.echo(f"seeded: {result.rows}; refused as suppressed: {result.refused_suppressed}")


@app.command()
def submit(
    request_id: Annotated[str, typer.Option(help="Upstream id (idempotency key).")],
    type_: Annotated[
        str, typer.Option("--type", help="erasure, restriction or lift_restriction")
    ] = "erasure",
    email: Annotated[list[str] | None, typer.Option(help="E-mail address (repeatable).")] = None,
    phone: Annotated[list[str] | None, typer.Option(help="Phone number (repeatable).")] = None,
    customer_id: Annotated[str | None, typer.Option()] = None,
    ldap_uid: Annotated[str | None, typer.Option()] = None,
    system: Annotated[list[str] | None, typer.Option(help="Limit to these systems.")] = None,
) -> None:
    """Submit a request (the upstream DSAR tool's job, for trying things out)."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "type": type_,
        "identity_verified": True,
        "subject": {
            "emails": email or [],
            "phones": phone or [],
            "customer_id": customer_id,
            "ldap_uid": ldap_uid,
        },
    }
    if system:
        body["systems"] = system
    _print_response(api().post("/v1/requests", json=body))


@app.command()
def status(request_id: str) -> None:
    """A request's status and per-system progress."""
    _print_response(api().get(f"/v1/requests/{request_id}"))


@app.command()
def report(request_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A request's completion report, as text (or JSON)."""
    response = api().get(f"/v1/requests/{request_id}/report")
    if response.status_code != 200 or as_json:
        _print_response(response)
    else:
        typer.echo(report_text(response.json()))


@app.command("list")
def list_requests(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only requests past their deadline.")] = False,
    stuck: Annotated[bool, typer.Option("--stuck", help="Only requests unchanged for a while.")] = False,
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
) -> None:
    """Requests, newest first: id, type, status, deadline."""
    params: dict[str, str] = {}
    if overdue:
        params["overdue"] = "true"
    if stuck:
        params["stuck"] = "true"
    if status_filter:
        params["status"] = status_filter
    response = api().get("/v1/requests", params=params)
    if response.status_code != 200:
        _print_response(response)
    for r in response.json():
        flag = "  OVERDUE" if r["overdue"] else ""
        typer.echo(f"{r['request_id']:<32} {r['type']:<17} {r['status']:<26} deadline {r['deadline']}{flag}")


@app.command()
def extend(
    request_id: str,
    months: Annotated[int, typer.Option(min=1, max=2)],
    reason: Annotated[str, typer.Option(help="Why; upstream tells the person.")],
) -> None:
    """Extend a request's deadline once by one or two months (Art. 12(3))."""
    _print_response(
        api().post(
            f"/v1/requests/{request_id}/extension",
            json={"months": months, "reason": reason},
            timeout=10,
        )
    )


@app.command()
def retry(request_id: str, system: str) -> None:
    """Try a failed system of a request again."""
    _print_response(api().post(f"/v1/requests/{request_id}/systems/{system}/retry"))


@app.command()
def audit(request_id: str) -> None:
    """Print a request's audit trail and verify its hash chain here, not trusting the server's verdict."""
    from shared.contracts.audit import AuditEntry, verify_chain

    response = api().get(f"/v1/requests/{request_id}/audit")
    if response.status_code != 200:
        _print_response(response)
    entries = [AuditEntry.model_validate(e) for e in response.json()["entries"]]
    for e in entries:
        typer.echo(f"{e.seq:>3} {e.at.isoformat()} {e.kind:<18} {json.dumps(e.detail)}  {e.hash[:12]}")
    broken = verify_chain(entries)
    if broken is not None:
        typer.echo(f"audit chain BROKEN at entry {broken}", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit chain verified: {len(entries)} entries")


dlq = typer.Typer(help="The dead-letter topic: what could not be processed, and why.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")


def kafka_settings() -> KafkaSettings:
    """LETHE_KAFKA_BOOTSTRAP, else the embedded broker of `lethe up`."""
    bootstrap = (
        os.environ.get("LETHE_KAFKA_BOOTSTRAP") or f"127.0.0.1:{StackConfig.from_env(state_dir()).kafka_port}"
    )
    return KafkaSettings(
        bootstrap=bootstrap,
        idempotent_producer=False,
        fetch_max_wait_ms=10,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )


@dlq.command("list")
def dlq_list() -> None:
    """Every dead letter: where it came from, the error, and its ids (never its payload)."""
    letters = asyncio.run(dead_letters.list_dead_letters(kafka_settings()))
    for d in letters:
        typer.echo(
            f"{d.partition}:{d.offset:<6} {d.source_topic:<36} request {d.request_id or '-':<24} {d.error}"
        )
    typer.echo(f"{len(letters)} dead letter(s)")


@dlq.command("replay")
def dlq_replay(
    everything: Annotated[bool, typer.Option("--all", help="Every letter not replayed before.")] = False,
    at: Annotated[str | None, typer.Option("--at", help="One letter, as PARTITION:OFFSET.")] = None,
) -> None:
    """Send dead letters back to where they came from (after the cause is fixed). Letters are
    sealed: LETHE_IDENTIFIER_KEY (and _EXTRA_KEYS) open them, else the embedded stack's keys."""
    if everything == (at is not None):
        raise typer.BadParameter("give --all or --at PARTITION:OFFSET")
    only = None
    if at is not None:
        partition, _, offset = at.partition(":")
        if not (partition.isdigit() and offset.isdigit()):
            raise typer.BadParameter("--at: PARTITION:OFFSET, e.g. 0:42")
        only = (int(partition), int(offset))
    replayed = asyncio.run(dead_letters.replay(kafka_settings(), key_commands.current_seal(), only))
    for d in replayed:
        typer.echo(f"replayed {d.partition}:{d.offset} to {dead_letters.replay_target(d.source_topic)}")
    typer.echo(f"{len(replayed)} replayed")


@app.command("trace")
def trace_command(
    request_id: str,
    traces: Annotated[
        Path | None, typer.Option(help="Folder of *.jsonl span files (default: the stack's).")
    ] = None,
    sql: Annotated[bool, typer.Option("--sql", help="Show every database statement too.")] = False,
) -> None:
    """A request's trace as a waterfall: service, span, duration, status."""
    response = api().get(f"/v1/requests/{request_id}")
    if response.status_code != 200:
        _print_response(response)
    trace_id = response.json().get("trace_id")
    if not trace_id:
        typer.echo("this request has no trace id (it was submitted without tracing)", err=True)
        raise typer.Exit(1)
    folder = traces or state_dir() / "traces"
    found = request_traces(read_spans(sorted(folder.glob("*.jsonl"))), trace_id)
    if not found:
        typer.echo(f"no spans of trace {trace_id} under {folder}", err=True)
        raise typer.Exit(1)
    for number, roots in enumerate(found):
        typer.echo(
            f"trace {roots[0].trace_id}" + (" (linked: started later for this request)" if number else "")
        )
        for line in waterfall(roots if sql else without_sql(roots)):
            typer.echo(line)


@app.command("store-schema")
def store_schema(
    system: Annotated[str, typer.Argument(help="billing, crm, mailing or recordings")],
) -> None:
    """The DDL a worker runs on its store's database at its start (its tables when new, its
    key indexes and functions, its journal), one statement after another: to build a changed
    index beforehand on a large table (README, Deployment, Upgrading)."""
    from services.billing.store import BillingAdapter
    from services.crm.store import CrmAdapter
    from services.mailing.store import MailingAdapter
    from services.recordings.store import RecordingsAdapter

    adapters = (BillingAdapter, CrmAdapter, MailingAdapter, RecordingsAdapter)
    stores = {adapter.system: adapter for adapter in adapters}
    if system not in stores:
        raise typer.BadParameter(f"one of {', '.join(stores)}", param_hint="SYSTEM")
    for statement in stores[system].ddl():
        typer.echo(statement.strip() + ";\n")


@app.command("config-reference")
def config_reference() -> None:
    """Every environment variable, its default and meaning (Markdown), from the settings classes."""
    from cli.config_reference import markdown

    typer.echo(markdown(), nl=False)


app.add_typer(review_commands.app, name="reviews")
app.add_typer(notice_commands.app, name="notices")
app.add_typer(key_commands.app, name="keys")
tokens = typer.Typer(help="API tokens (admin).", no_args_is_help=True)

app.add_typer(tokens, name="tokens")


@tokens.command("create")
def create_token(
    role: Annotated[str, typer.Option(help="submitter, compliance, legal, recipient or admin")],
    label: Annotated[str, typer.Option(help="Who or what it is for.")] = "",
    recipient: Annotated[
        str | None, typer.Option(help="With --role recipient: the register's recipient id it acts for.")
    ] = None,
) -> None:
    """Create a token; it is printed once and only its hash is kept."""
    body = {"role": role, "label": label} | ({"recipient_id": recipient} if recipient else {})
    _print_response(api().post("/v1/tokens", json=body))


@tokens.command("list")
def list_tokens() -> None:
    """Every token: id, role, label, created, last used, revoked (never a secret)."""
    response = api().get("/v1/tokens")
    if response.status_code != 200:
        _print_response(response)
    for t in response.json():
        state = (
            f"revoked {t['revoked_at']}" if t["revoked_at"] else f"last used {t['last_used_at'] or 'never'}"
        )
        typer.echo(f"{t['id']:<24} {t['role']:<11} {t['label'][:30]:<30} {state}")


@tokens.command("revoke")
def revoke_token(token_id: str) -> None:
    """Revoke a token by its id (the part between `lethe_` and the secret): refused from now on."""
    _print_response(api().delete(f"/v1/tokens/{token_id}"))


def _print_response(response: httpx.Response) -> None:

    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(app())
