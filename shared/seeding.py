"""Common ground of the per-system seed sections: strict models, so that a typo in a seed
file is an error naming the field rather than a silently missing record."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SeedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
