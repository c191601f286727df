"""agentledger: every tool call and LLM call of an agent pipeline as a durable step in Redis."""

from ._app import App, Pipeline
from ._codec import Codec
from ._context import (
    current_idempotency_key,
    current_run,
    current_scope,
    outside_run,
    restart_numbering,
    scope,
)
from ._errors import (
    ApprovalPending,
    CorruptRecordError,
    EmbeddedRedisError,
    FencedOutError,
    InDoubtStepError,
    LedgerError,
    LedgerUnavailableError,
    NonDeterminismError,
    NoRunContextError,
    PayloadTooLargeError,
    RecordedStepError,
    RedisAuthError,
    RedisConfigError,
    RunBusyError,
    StepRejected,
    ThreadScopeError,
    UnknownSchemaVersionError,
    UnrecordableValueError,
    UnsupportedTypeError,
)
from ._keys import check_run_id
from ._ledger import Ledger, PendingApproval
from ._records import (
    Decision,
    InDoubtPolicy,
    RunRecord,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
)
from ._session import RunSession, StepCall, StepStart
from ._step import aapproval, approval, step
from ._threads import in_thread
from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "ApprovalPending",
    "Codec",
    "CorruptRecordError",
    "Decision",
    "EmbeddedRedisError",
    "FencedOutError",
    "InDoubtPolicy",
    "InDoubtStepError",
    "Ledger",
    "LedgerError",
    "LedgerUnavailableError",
    "NoRunContextError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "PendingApproval",
    "Pipeline",
    "RecordedStepError",
    "RedisAuthError",
    "RedisConfigError",
    "RunBusyError",
    "RunRecord",
    "RunSession",
    "RunStatus",
    "StepCall",
    "StepKind",
    "StepRecord",
    "StepRejected",
    "StepStart",
    "StepStatus",
    "ThreadScopeError",
    "UnknownSchemaVersionError",
    "UnrecordableValueError",
    "UnsupportedTypeError",
    "Worker",
    "__version__",
    "aapproval",
    "approval",
    "check_run_id",
    "current_idempotency_key",
    "current_run",
    "current_scope",
    "in_thread",
    "outside_run",
    "restart_numbering",
    "scope",
    "step",
]
