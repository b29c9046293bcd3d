"""When intake reads the holds topic back (services/intake/recovery.py)."""

from __future__ import annotations

from typing import Any, cast

from services.intake.recovery import RECHECK_AFTER_RECOVERY_S, BrokerWatch
from shared.settings import RecoverySettings


def watch() -> BrokerWatch:
    settings = RecoverySettings(holds_verify_s=10)
    nothing = cast(Any, None)
    return BrokerWatch(nothing, nothing, nothing, nothing, [], settings)


def test_the_holds_topic_is_read_back_soon_after_a_recovery_and_a_period_on_otherwise() -> None:
    w = watch()
    assert w.verification_due(0.0)  # at start-up
    w.schedule_verification(100.0)
    assert not w.verification_due(109.0) and w.verification_due(110.0)
    # After a broker loss the announcement may not have reached the topic: look again soon.
    w.schedule_verification(200.0, after_recovery=True)
    assert not w.verification_due(200.0 + RECHECK_AFTER_RECOVERY_S - 0.1)
    assert w.verification_due(200.0 + RECHECK_AFTER_RECOVERY_S)
