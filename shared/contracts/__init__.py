"""Wire contracts: pydantic v2 models, JSON on the wire, versioned by `schema_version`."""

from shared.contracts.base import SCHEMA_VERSION, Message, RequestType, utcnow
from shared.contracts.commands import (
    COMMAND_FOR_TYPE,
    SUBJECT_COMMAND,
    EraseSubject,
    LiftRestriction,
    RestrictSubject,
    SubjectCommand,
)
from shared.contracts.events import (
    NotificationRequested,
    OutcomeReported,
    RequestAccepted,
    RequestCompleted,
    RequestStatusChanged,
)
from shared.contracts.outcomes import Action, CategoryOutcome, Retention, Verification
from shared.contracts.report import (
    FINAL_STATUSES,
    DeferredErasure,
    Report,
    RequestStatus,
    SystemProgress,
    SystemReport,
    SystemState,
)

__all__ = [
    "COMMAND_FOR_TYPE",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "SUBJECT_COMMAND",
    "Action",
    "CategoryOutcome",
    "DeferredErasure",
    "EraseSubject",
    "LiftRestriction",
    "Message",
    "NotificationRequested",
    "OutcomeReported",
    "Report",
    "RequestAccepted",
    "RequestCompleted",
    "RequestStatus",
    "RequestStatusChanged",
    "RequestType",
    "RestrictSubject",
    "Retention",
    "SubjectCommand",
    "SystemProgress",
    "SystemReport",
    "SystemState",
    "Verification",
    "utcnow",
]
