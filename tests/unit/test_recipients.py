"""The register and the rules of who is told what (GDPR Art. 19), with the saga's part: a
required acknowledgement keeps a request open, a lift waits for its webhook notices."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.intake.egress import Egress
from services.intake.notice_sender import BATCH, NoticeSender, Retries, lease_for
from services.intake.notice_settings import webhook_secrets
from services.tracker import recipients
from services.tracker.saga import Saga, Timeouts
from shared.contracts import CategoryOutcome, RequestStatus, RequestType, SystemState
from shared.contracts.notices import NoticeBody, NoticeState, NoticeUpdated
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.identity import Identities
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.recipients.plan import Planner, restricted
from shared.recipients.register import DEFAULT_REGISTER_FILE, RegisterError, RegisterFile, load_register
from tests.unit.test_saga import T0, TIMEOUTS, outcome, saga

POLICY = load_policy(DEFAULT_POLICY_FILE)
ROOT = Path(__file__).resolve().parents[2]
SECRET = "ab" * 32
SEAL = IdentifierSeal(new_identifier_key())


def entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "mailer",
        "name": "Bulk mailer",
        "role": "processor",
        "receives": {"mailing": ["subscribers"]},
        "identifiers": ["emails"],
        "notify": {
            "channel": "webhook",
            "url": "https://mailer.example/hook",
            "secret_env": "LETHE_RECIPIENT_M",
        },
        "must_acknowledge": True,
    }
    return base | changes


def register(*entries: dict[str, Any]) -> RegisterFile:
    return RegisterFile.model_validate({"version": "t", "recipients": list(entries)})


def write(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    path = tmp_path / "recipients.yaml"
    path.write_text(json.dumps({"version": "t", "recipients": list(entries)}))
    return path


def test_the_shipped_register_is_valid_against_the_policy() -> None:
    shipped = load_register(DEFAULT_REGISTER_FILE, POLICY)
    assert {r.id for r in shipped.recipients} >= {"bulk-mailer"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"receives": {"billing2": ["accounts"]}}, "recipient mailer: receives.billing2: no such system"),
        (
            {"receives": {"mailing": ["subscriber"]}},
            "recipient mailer: receives.mailing: no category 'subscriber'",
        ),
        ({"role": "friend"}, "recipient mailer: role:"),
        (
            {"notify": {"channel": "webhook", "url": "ftp://x/y", "secret_env": "LETHE_RECIPIENT_M"}},
            "notify.url",
        ),
        ({"notify": {"channel": "manual"}}, "recipient mailer: notify.contact"),
        ({"identifiers": ["names"]}, "recipient mailer: identifiers.0"),
    ],
)
def test_a_bad_entry_names_the_recipient_and_field(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(RegisterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_register(write(tmp_path, entry(**changes)), POLICY)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegisterError, match="recipient mailer: duplicate id"):
        load_register(write(tmp_path, entry(), entry()), POLICY)


def test_webhooks_need_their_secret_https_and_a_public_host() -> None:
    ok = register(entry())
    assert webhook_secrets(ok, {"LETHE_RECIPIENT_M": SECRET}, False, Egress()) == {"mailer": SECRET}
    with pytest.raises(
        RegisterError, match=r"recipient mailer: notify\.secret_env: LETHE_RECIPIENT_M is not set"
    ):
        webhook_secrets(ok, {}, False, Egress())
    with pytest.raises(RegisterError, match=r"notify\.secret_env: LETHE_RECIPIENT_M: a placeholder"):
        webhook_secrets(ok, {"LETHE_RECIPIENT_M": "change-me" * 8}, False, Egress())
    plain = register(
        entry(notify={"channel": "webhook", "url": "http://m.example/h", "secret_env": "LETHE_RECIPIENT_M"})
    )
    with pytest.raises(RegisterError, match=r"notify\.url: must be https outside development"):
        webhook_secrets(plain, {"LETHE_RECIPIENT_M": SECRET}, False, Egress())
    assert webhook_secrets(plain, {"LETHE_RECIPIENT_M": SECRET}, True, Egress())
    for host in ("127.0.0.1", "localhost", "169.254.169.254", "[::1]", "10.0.0.8"):
        inside = register(
            entry(
                notify={"channel": "webhook", "url": f"https://{host}/h", "secret_env": "LETHE_RECIPIENT_M"}
            )
        )
        with pytest.raises(RegisterError, match=r"notify\.url: a loopback, private"):
            webhook_secrets(inside, {"LETHE_RECIPIENT_M": SECRET}, True, Egress())


def erased(category: str, n: int = 1, **more: int) -> CategoryOutcome:
    return CategoryOutcome(category=category, found=n, erased=n, **more)


def test_a_recipient_is_told_only_of_changes_in_what_it_receives() -> None:
    planner = Planner(register(entry(), entry(id="payments", receives={"billing": ["payments"]})))
    outcomes = [
        ("mailing", erased("subscribers")),
        ("mailing", erased("consent_records")),
        ("billing", CategoryOutcome(category="payments", found=2)),  # retained: nothing changed
    ]
    notices = planner.after_outcomes("r", RequestType.ERASURE, outcomes, T0)
    assert [n.recipient_id for n in notices] == ["mailer"]
    assert [(c.system, c.category, c.counts) for c in notices[0].categories] == [
        ("mailing", "subscribers", {"erased": 1})
    ]
    assert notices[0].acknowledge_by == T0 + timedelta(days=14) and notices[0].state is NoticeState.PENDING
    assert planner.after_outcomes("r", RequestType.LIFT_RESTRICTION, outcomes, T0) == []


def test_identifiers_sent_are_only_the_kinds_it_holds() -> None:
    known = Identities(emails=["a@example.com"], phones=["+447700900123"], customer_ids=["C-1"])
    assert Planner(register(entry())).identifiers_for("mailer", known) == Identities(emails=["a@example.com"])
    assert not Planner(register(entry(identifiers=[]))).identifiers_for("mailer", known)


def test_who_received_the_data_follows_where_it_was_found() -> None:
    planner = Planner(register(entry(), entry(id="payments", receives={"billing": ["payments"]})))
    found = [("mailing", "subscribers"), ("crm", "contacts")]
    assert [(r.id, shared) for r, shared in planner.disclosed_to(found)] == [
        ("mailer", [("mailing", "subscribers")])
    ]


@pytest.fixture
def installed() -> Iterator[None]:
    manual = entry(id="printer", notify={"channel": "manual", "contact": "desk"}, must_acknowledge=False)
    recipients.install(Planner(register(entry(), manual)), None)
    yield
    recipients.install(Planner(), None)


def update(s: Saga, recipient: str, state: NoticeState, attempts: int = 1, **more: Any) -> bool:
    notice = s.recipients.notices[recipient]
    at = T0 + timedelta(hours=2)
    return s.notice_updated(
        NoticeUpdated(
            request_id="r",
            notice_id=notice.notice_id,
            recipient_id=recipient,
            state=state,
            attempts=attempts,
            at=at,
            **more,
        )
    )


def test_a_required_acknowledgement_keeps_the_request_awaiting_the_recipient(installed: None) -> None:
    s = saga("mailing")
    s.slots["mailing"].outcome = None
    s.record(outcome("mailing", command_id=s.slots["mailing"].command_id))
    # the fake outcome's category is "things": nothing the register names changed
    assert s.status is RequestStatus.COMPLETED and not s.recipients.notices
    s = saga("mailing")
    answer = outcome("mailing", command_id=s.slots["mailing"].command_id)
    s.record(answer.model_copy(update={"categories": [erased("subscribers")]}))
    assert s.status is RequestStatus.AWAITING_RECIPIENTS and s.completed_at is None
    assert {n.recipient_id for n in s.recipients.new} == {"mailer", "printer"}
    assert update(s, "mailer", NoticeState.PENDING, error="HTTP 503")
    assert not update(s, "mailer", NoticeState.PENDING, error="HTTP 503")  # a repeat
    assert update(s, "mailer", NoticeState.DELIVERED, attempts=2)
    assert s.status is RequestStatus.AWAITING_RECIPIENTS
    assert update(s, "mailer", NoticeState.ACKNOWLEDGED, attempts=2, acknowledged_via="recipient")
    assert s.status is RequestStatus.COMPLETED and s.completed_at == T0 + timedelta(hours=2)
    assert not update(s, "mailer", NoticeState.FAILED, attempts=3)  # nothing after the acknowledgement
    told = {n.recipient_id: n for n in s.report().recipients}
    assert told["mailer"].acknowledged_via == "recipient" and told["mailer"].delivered_at
    assert told["printer"].state is NoticeState.PENDING  # a task, not awaited: the request is complete


def test_a_lift_waits_for_its_webhook_notices_not_for_manual_tasks(installed: None) -> None:
    s = saga("mailing")
    s.request_type = RequestType.LIFT_RESTRICTION
    s.announce_lift(T0, [("mailing", "subscribers")])
    assert s.recipients.held and not s.recipients.release_now
    assert [c.counts for n in s.recipients.new for c in n.categories] == [{}, {}]
    assert update(s, "mailer", NoticeState.PENDING, error="ConnectError")
    assert s.recipients.held
    assert update(s, "mailer", NoticeState.FAILED, attempts=2, error="ConnectError")  # given up: it goes
    assert not s.recipients.held and s.recipients.release_now
    assert [kind for _, kind, _ in s.audit][-2:] == ["notice_failed", "lift_dispatched"]


def test_without_recipients_a_lift_goes_at_once() -> None:
    s = saga("mailing")
    s.request_type = RequestType.LIFT_RESTRICTION
    s.announce_lift(T0)
    assert s.recipients.release_now and not s.recipients.notices


def test_the_published_notice_schema_matches_the_body() -> None:
    published = json.loads((ROOT / "deploy" / "notice.schema.json").read_text())
    assert published == NoticeBody.model_json_schema(), (
        "run: lethe notices schema > deploy/notice.schema.json"
    )


# --- The reviewer's findings on the merge (each fails without its fix) ---------------------------


def lift(*restricted: tuple[str, str]) -> Saga:
    s = saga("mailing", "crm")
    s.request_type = RequestType.LIFT_RESTRICTION
    s.announce_lift(T0, list(restricted))
    return s


def test_recovery_resends_what_still_awaits_an_acknowledgement(installed: None) -> None:
    s = lift(("mailing", "subscribers"))
    assert {n.recipient_id for n in s.recipients.unsettled()} == {"mailer", "printer"}
    assert update(s, "mailer", NoticeState.DELIVERED)  # its acknowledgement may be lost: again
    assert update(s, "printer", NoticeState.ACKNOWLEDGED, acknowledged_via="compliance")
    assert [n.recipient_id for n in s.recipients.unsettled()] == ["mailer"]
    assert update(s, "mailer", NoticeState.ACKNOWLEDGED, acknowledged_via="recipient", closed_by="tok1")
    assert s.recipients.unsettled() == []


def test_the_acknowledging_token_is_in_the_report_and_audit(installed: None) -> None:
    s = lift(("mailing", "subscribers"))
    assert update(s, "mailer", NoticeState.ACKNOWLEDGED, acknowledged_via="recipient", closed_by="tok1")
    assert s.report().recipients[0].acknowledged_by == "tok1"
    assert next(d for _, kind, d in s.audit if kind == "notice_acknowledged")["token_id"] == "tok1"


def test_a_failed_webhook_of_a_must_acknowledge_recipient_waits_for_compliance(installed: None) -> None:
    s = saga("mailing")
    answer = outcome("mailing", command_id=s.slots["mailing"].command_id)
    s.record(answer.model_copy(update={"categories": [erased("subscribers")]}))
    assert update(s, "mailer", NoticeState.FAILED, attempts=10, error="ConnectError")
    assert s.status is RequestStatus.AWAITING_RECIPIENTS
    assert s.report().recipients[0].error == "ConnectError"
    assert update(s, "mailer", NoticeState.ACKNOWLEDGED, attempts=10, acknowledged_via="compliance")
    assert s.status is RequestStatus.COMPLETED


def test_a_released_lift_starts_its_systems_wait_and_tries_then(installed: None) -> None:
    s = lift(("mailing", "subscribers"))
    later = T0 + timedelta(hours=2)
    assert update(s, "mailer", NoticeState.DELIVERED)  # at T0 + 2 h: the lift goes
    assert s.recipients.release_now
    assert {(x.dispatched_at, x.attempts) for x in s.slots.values()} == {(later, 1)}
    assert s.time_out("mailing", later + TIMEOUTS.first - timedelta(seconds=1), TIMEOUTS) is None


def test_a_held_lift_timing_out_is_sent_not_failed(installed: None) -> None:
    s = lift(("mailing", "subscribers"))
    once = Timeouts(first=timedelta(minutes=10), attempts=1)
    due = T0 + timedelta(minutes=11)
    assert s.time_out("mailing", due, once) == "released"
    assert s.time_out("crm", due, once) is None  # released with it
    assert not s.recipients.held and s.recipients.release_now
    assert all(x.state is SystemState.DISPATCHED and x.attempts == 1 for x in s.slots.values())
    assert {x.dispatched_at for x in s.slots.values()} == {due}
    assert [(k, d.get("reason")) for _, k, d in s.audit][-1] == ("lift_dispatched", "notices_timed_out")
    assert s.time_out("mailing", due + timedelta(minutes=11), once) == "failed"  # now a real silence


def test_a_lift_tells_only_the_recipients_of_what_was_restricted(installed: None) -> None:
    assert not lift().recipients.notices and lift().recipients.release_now  # nothing restricted
    s = lift(("crm", "contacts"), ("billing", "payments"))  # billing is not targeted
    assert {n.recipient_id for n in s.recipients.new} == set()  # neither receives crm/contacts
    planner = Planner(register(entry(), entry(id="crm-x", receives={"crm": ["contacts", "notes"]})))
    told = planner.before_lift("l", ["crm", "mailing"], [("crm", "contacts")], T0)
    assert [(n.recipient_id, [c.category for c in n.categories]) for n in told] == [("crm-x", ["contacts"])]

    assert restricted([("crm", CategoryOutcome(category="contacts", found=1, restricted=1))]) == {
        ("crm", "contacts")
    }
    assert restricted([("crm", CategoryOutcome(category="contacts", found=1))]) == set()


def test_register_names_what_a_notice_cannot_carry(tmp_path: Path) -> None:
    long = "c" * 65
    with pytest.raises(
        RegisterError, match=r"recipient mailer: receives\.mailing: a category name longer than 64"
    ):
        load_register(write(tmp_path, entry(receives={"mailing": [long]})), POLICY)
    many = {"mailing": [f"c{i}" for i in range(201)]}
    with pytest.raises(RegisterError, match=r"recipient mailer: receives: 201 categories, more than the 200"):
        load_register(write(tmp_path, entry(receives=many)), POLICY)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "notify": {
                    "channel": "webhook",
                    "url": "https://a.example/h",
                    "secret_env": "LETHE_RECIPIENT_M",
                    "sekret": 1,
                }
            },
            "recipient mailer: notify.sekret: unknown field",
        ),
        ({"colour": "red"}, "recipient mailer: colour: unknown field"),
    ],
)
def test_an_unknown_field_is_named_by_its_path(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RegisterError, match=message.replace(".", r"\.")):
        load_register(write(tmp_path, entry(**changes)), POLICY)


def test_the_sender_lease_outlasts_its_worst_pass() -> None:
    for parallel, deadline in ((8, 10.0), (1, 10.0), (8, 30.0)):
        worst = -(-BATCH // parallel) * deadline
        assert lease_for(BATCH, parallel, deadline).total_seconds() >= 1.5 * worst


def sender(reg: RegisterFile, secrets: dict[str, str] | None = None) -> NoticeSender:
    return NoticeSender(None, reg, secrets or {}, SEAL, Retries())  # type: ignore[arg-type]


def row(**changes: Any) -> dict[str, Any]:
    base = {
        "notice_id": uuid.uuid4(),
        "request_id": "r",
        "request_type": "erasure",
        "recipient_id": "mailer",
        "categories": json.dumps([{"system": "mailing", "category": "subscribers"}]),
        "sealed_identifiers": SEAL.seal(Identities(emails=["a@example.com"], phones=["+447700900123"])),
        "must_acknowledge": False,
        "acknowledge_by": None,
        "attempts": 0,
    }
    return base | changes


def test_the_body_carries_only_the_kinds_intakes_register_lists() -> None:
    body = sender(register(entry())).body(row(), T0)  # type: ignore[arg-type]
    assert body.identifiers == {"emails": ["a@example.com"]}  # the phone the tracker sent is dropped
    assert sender(register(entry(identifiers=[]))).body(row(), T0).identifiers == {}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reg", "secrets", "stored", "error"),
    [
        (register(), {}, {}, "recipient not in intake's register"),
        (
            register(entry(notify={"channel": "manual", "contact": "desk"})),
            {},
            {},
            "recipient is not a webhook in intake's register",
        ),
        (register(entry()), {}, {}, "recipient's signing secret is not configured"),
        (
            register(entry()),
            {"mailer": SECRET},
            {"sealed_identifiers": "gAAAAAnotatoken"},
            "identifiers cannot be opened with the identifier key",
        ),
        (
            register(entry()),
            {"mailer": SECRET},
            {"categories": "[{}]"},
            "notice cannot be built from its stored row",
        ),
    ],
)
async def test_a_notice_that_can_never_be_sent_is_failed_not_retried_for_ever(
    reg: RegisterFile, secrets: dict[str, str], stored: dict[str, Any], error: str
) -> None:
    s = sender(reg, secrets)
    recorded: list[tuple[str | None, bool]] = []

    async def record(row: Any, err: str | None, now: Any, final: bool = False) -> None:
        recorded.append((err, final))

    s._record = record  # type: ignore[method-assign]
    assert await s._send(row(**stored)) is False  # type: ignore[arg-type]
    assert recorded == [(error, True)]
