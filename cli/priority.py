"""How the embedded stack shares the machine: the submission API ahead of the pipeline.

On a laptop (or the 2-core benchmark machine) every process shares the same cores. A POST
/v1/requests is a short burst of work that an upstream tool waits on; an erasure moving through
the workers and the tracker is throughput work that already waits in the outbox and on topics.
Given equal weight, the scheduler lets a submission wait behind whichever worker holds the CPU,
and its latency is the pipeline's. A higher nice value for the pipeline's processes (workers,
tracker, broker, slapd) gives intake the CPU first when it needs it; the pipeline takes what is
left, which under load is nearly all of it. A real deployment gives intake its own CPU
(requests and limits in deploy/k8s) instead.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.env_settings import from_environment

# The processes an upstream tool waits on: they keep the default priority.
FOREGROUND = frozenset({"intake"})


class PrioritySettings(BaseSettings):
    """The embedded stack's process priorities (not used with a real deployment)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_EMBEDDED_", extra="ignore")

    pipeline_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Nice value of the embedded stack's workers, tracker, broker and slapd (intake and"
        " PostgreSQL keep 0): higher lets intake answer submissions first on a busy machine.",
    )

    @classmethod
    def load(cls, overrides: dict[str, str] | None = None) -> PrioritySettings:
        return from_environment(cls, "LETHE_EMBEDDED_", overrides)

    def nice_of(self, process: str) -> int:
        """`process` as the stack names it: a service, `service-instance`, broker or slapd."""
        return 0 if process.split("-", 1)[0] in FOREGROUND else self.pipeline_nice
