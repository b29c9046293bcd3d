"""Settings of the embedded stack itself, read from the environment (and the stack's own
overrides) with a clear error naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def from_environment(
    cls: type[S],
    prefix: str,
    overrides: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> S:
    """`cls` from the variables named `prefix` + field (`defaults` < the environment <
    `overrides`); one that is wrong stops the stack, naming it. Variables of the prefix that are
    no field of `cls` (another setting's) are left alone."""
    env = {**(defaults or {}), **os.environ, **(overrides or {})}
    given = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    try:
        return cls.model_validate({k: v for k, v in given.items() if k in cls.model_fields})
    except ValidationError as exc:
        wrong = "; ".join(f"{prefix}{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors())
        raise RuntimeError(wrong) from None
