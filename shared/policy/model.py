"""The policy file's schema. Every mistake is reported with the rule id and the field."""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.codec import describe_validation_error

DEFAULT_POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "retention.yaml"


class OnErasure(StrEnum):
    ERASE = "erase"
    ANONYMISE = "anonymise"
    RETAIN = "retain"


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    years: int = Field(0, ge=0, le=100)
    months: int = Field(0, ge=0, le=1200)
    days: int = Field(0, ge=0, le=36500)

    def after(self, start: date) -> date:
        """Calendar arithmetic: 29 Feb + 1 year is 28 Feb."""
        month_index = start.month - 1 + self.months + 12 * self.years
        year, month = start.year + month_index // 12, month_index % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return date(year, month, day) + timedelta(days=self.days)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_.-]{3,80}$", description="Cited in reports.")
    system: str
    category: str
    on_erasure: OnErasure
    keep_fields: tuple[str, ...] = Field((), description="anonymise: personal fields that stay.")
    strip_fields: tuple[str, ...] = Field((), description="retain: personal fields cleared meanwhile.")
    retain_for: Period | None = None
    anchor: str | None = Field(None, description="The record date the period counts from.")
    while_fact: str | None = Field(
        None, description="retain: only while this fact holds (e.g. contract_active)."
    )
    legal_basis: str = Field(min_length=10)
    gdpr_article: str = Field(pattern=r"^\d{1,2}(\(\d\))?(\([a-z]\))?$")
    source: str = Field(description="Where the rule comes from: a source document, a statute.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.on_erasure is OnErasure.RETAIN:
            if self.retain_for is None and self.while_fact is None and self.anchor is None:
                raise ValueError("retain needs an anchor date, retain_for or while_fact")
            if self.retain_for is not None and self.anchor is None:
                raise ValueError("retain_for needs an anchor date")
        elif self.retain_for or self.while_fact or self.strip_fields:
            raise ValueError(f"{self.on_erasure.value} takes no retain_for, while_fact or strip_fields")
        if self.keep_fields and self.on_erasure is not OnErasure.ANONYMISE:
            raise ValueError("keep_fields is for anonymise only")
        return self


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, description="Cited in reports, so a report says which policy applied.")
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[tuple[str, str]] = set()
        ids: set[str] = set()
        for rule in self.rules:
            if rule.id in ids:
                raise ValueError(f"rule {rule.id}: duplicate id")
            if (rule.system, rule.category) in seen:
                raise ValueError(f"rule {rule.id}: a second rule for {rule.system}/{rule.category}")
            ids.add(rule.id)
            seen.add((rule.system, rule.category))
        return self

    def rule_for(self, system: str, category: str) -> Rule | None:
        return next((r for r in self.rules if r.system == system and r.category == category), None)


class PolicyError(ValueError):
    pass


def load_policy(path: Path) -> PolicyFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read: {exc}") from None
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as exc:
        field, reason = describe_validation_error(exc)
        parts = field.split(".")
        if len(parts) >= 2 and parts[0] == "rules" and parts[1].isdigit():
            rules = raw.get("rules") if isinstance(raw, dict) else None
            index = int(parts[1])
            rule_id = (
                rules[index].get("id", f"#{index}")
                if isinstance(rules, list) and isinstance(rules[index], dict)
                else f"#{index}"
            )
            field = f"rule {rule_id}: " + (".".join(parts[2:]) or "(rule)")
        raise PolicyError(f"{path}: {field}: {reason}") from None


def categories_by_system(policy: PolicyFile) -> dict[str, frozenset[str]]:
    """The categories each system's rules cover: every category a worker holds has one (a worker
    refuses to start otherwise, `check_categories`), so these are the categories there are."""
    found: dict[str, set[str]] = {}
    for rule in policy.rules:
        found.setdefault(rule.system, set()).add(rule.category)
    return {system: frozenset(names) for system, names in found.items()}


def check_categories(
    policy: PolicyFile,
    system: str,
    categories: dict[str, tuple[str, ...]],
    terms: dict[str, tuple[str, ...]],
) -> None:
    """A worker refuses to start unless every category it holds has a rule, every field a rule
    names is one of the category's personal fields, and the date a rule counts from and the fact
    it keeps while are among what the category's records carry (`terms`): a typo
    must mean neither 'erase nothing' nor, a date or fact never found, 'erase what the law keeps'."""
    for category, personal in categories.items():
        rule = policy.rule_for(system, category)
        if rule is None:
            raise PolicyError(f"no rule for {system}/{category}")
        for field in (*rule.keep_fields, *rule.strip_fields):
            if field not in personal:
                raise PolicyError(f"rule {rule.id}: {field!r} is not a personal field of {category}")
        known = terms.get(category, ())
        for name, value in (("anchor", rule.anchor), ("while_fact", rule.while_fact)):
            if value is not None and value not in known:
                raise PolicyError(
                    f"rule {rule.id}: {name}: {value!r} is not a date or fact of {category}"
                    f" (its records carry: {', '.join(known) or 'none'})"
                )
