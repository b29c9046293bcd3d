"""The register's schema and loader. Every mistake names the recipient and the field; an entry
naming a system or category the retention policy does not know stops the service, like a
policy rule with a typo: a register that silently tells nobody is the failure to avoid."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.codec import describe_validation_error
from shared.contracts.notices import MAX_CATEGORY_LENGTH, MAX_NOTICE_CATEGORIES
from shared.identity import Kind
from shared.policy.model import PolicyFile

DEFAULT_REGISTER_FILE = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "recipients.yaml"


class RecipientRole(StrEnum):
    PROCESSOR = "processor"
    CONTROLLER = "controller"
    PUBLIC = "public"


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Literal["webhook"]
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2000)
    secret_env: str = Field(
        pattern=r"^LETHE_RECIPIENT_[A-Z0-9_]{1,60}$",
        description="The environment variable holding this recipient's signing secret (32+ bytes).",
    )


class Manual(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Literal["manual"]
    contact: str = Field(min_length=3, max_length=500, description="Who compliance tells, and how.")


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,62}$")
    name: str = Field(min_length=2, max_length=200)
    role: RecipientRole
    receives: dict[str, list[str]] = Field(
        min_length=1, description="Per system, the data categories disclosed to it."
    )
    identifiers: list[Kind] = Field(
        default_factory=list, description="Kinds of identifier it already holds, and is sent."
    )
    notify: Annotated[Webhook | Manual, Field(discriminator="channel")]
    must_acknowledge: bool = Field(
        False, description="The request waits for its acknowledgement (a 2xx does not suffice)."
    )
    acknowledge_within_days: int = Field(14, ge=1, le=365)

    @model_validator(mode="after")
    def _categories(self) -> Self:
        for system, categories in self.receives.items():
            if not categories:
                raise ValueError(f"receives.{system}: names no category")
        return self

    def receives_category(self, system: str, category: str) -> bool:
        return category in self.receives.get(system, ())


class RegisterFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    recipients: list[Recipient] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [r.id for r in self.recipients]
        for rid in ids:
            if ids.count(rid) > 1:
                raise ValueError(f"recipient {rid}: duplicate id")
        return self

    def get(self, recipient_id: str) -> Recipient | None:
        return next((r for r in self.recipients if r.id == recipient_id), None)


EMPTY = RegisterFile(version="none")


class RegisterError(ValueError):
    pass


def load_register(path: Path, policy: PolicyFile) -> RegisterFile:
    """The register at `path`, checked against the policy's systems and categories."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegisterError(f"{path}: cannot read: {exc}") from None
    try:
        register = RegisterFile.model_validate(raw)
    except ValidationError as exc:
        raise RegisterError(f"{path}: {_field(raw, *_describe(exc))}") from None
    try:
        check_against_policy(register, policy)
    except RegisterError as exc:
        raise RegisterError(f"{path}: {exc}") from None
    return register


def _describe(exc: ValidationError) -> tuple[str, str]:
    """The field and the problem. An unknown key is named in full: the register is
    configuration, not a message that might carry personal data in its keys."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "extra_forbidden":
        return ".".join(str(p) for p in first["loc"]), "unknown field"
    return describe_validation_error(exc)


def _field(raw: object, field: str, reason: str) -> str:
    """`recipients.2.notify.url` as `recipient mailer: notify.url`."""
    parts = field.split(".")
    entries = raw.get("recipients") if isinstance(raw, dict) else None
    if len(parts) >= 2 and parts[0] == "recipients" and parts[1].isdigit() and isinstance(entries, list):
        index = int(parts[1])
        entry = entries[index] if index < len(entries) else None
        name = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        parts = [f"recipient {name}:", ".".join(parts[2:]) or "(entry)"]
        # A discriminated union names the channel taken: `notify.webhook.url` reads `notify.url`.
        parts[1] = parts[1].replace("notify.webhook.", "notify.").replace("notify.manual.", "notify.")
        return f"{' '.join(parts)}: {reason}"
    return f"{field}: {reason}"


def check_against_policy(register: RegisterFile, policy: PolicyFile) -> None:
    known = {(r.system, r.category) for r in policy.rules}
    systems = {system for system, _ in known}
    for recipient in register.recipients:
        # What a notice can carry (shared/contracts/notices.py): beyond it, a notice would be
        # refused when sent, and the outcome that planned it dead-lettered.
        total = sum(len(categories) for categories in recipient.receives.values())
        if total > MAX_NOTICE_CATEGORIES:
            raise RegisterError(
                f"recipient {recipient.id}: receives: {total} categories, more than the"
                f" {MAX_NOTICE_CATEGORIES} a notice can carry"
            )
        for system, categories in recipient.receives.items():
            if system not in systems:
                raise RegisterError(f"recipient {recipient.id}: receives.{system}: no such system")
            for category in categories:
                if len(category) > MAX_CATEGORY_LENGTH:
                    raise RegisterError(
                        f"recipient {recipient.id}: receives.{system}: a category name longer than"
                        f" {MAX_CATEGORY_LENGTH} characters ({category[:20]!r}…)"
                    )
                if (system, category) not in known:
                    raise RegisterError(
                        f"recipient {recipient.id}: receives.{system}: no category {category!r} in {system}"
                    )
