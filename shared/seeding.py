"""Common ground of the per-system seed sections: strict models, so that a typo in a seed
file is an error naming the field rather than a silently missing record; and the shift that
makes a file's dates relative to the day it is loaded."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

M = TypeVar("M", bound=BaseModel)


class SeedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def shift_dates(model: M, by: timedelta) -> M:
    """A copy of `model` with every date and datetime in it, at any depth, moved by `by`.

    Retention rules measure a record's age, so a file written for one day keeps every rule's
    decision only if all its dates move together (an account's closure with its invoices)."""
    if not by:
        return model
    return model.model_copy(
        update={name: _shifted(getattr(model, name), by) for name in type(model).model_fields}
    )


def _shifted(value: Any, by: timedelta) -> Any:
    if isinstance(value, date):  # datetime too: a subclass, and + keeps its time and zone
        return value + by
    if isinstance(value, BaseModel):
        return shift_dates(value, by)
    if isinstance(value, list | tuple):
        return type(value)(_shifted(v, by) for v in value)
    return value
