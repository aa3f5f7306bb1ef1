"""Signals for external steps: ``complete_external_step`` and ``fail_external_step``.

An external step waits (status ``waiting``) until one of these is called, typically from a
webhook handler inside the application's own transaction. The first signal wins; sending the
same one again is a no-op, a different one raises ``ExternalStepConflict``.
"""

from __future__ import annotations

import uuid

from runledger.core.job import check_text
from runledger.core.payload import JsonValue, check_json, dumps_within
from runledger.core.status import StepKind, StepStatus
from runledger.errors import ExternalStepConflict, NotAnExternalStep, StepNotFound, StepNotWaiting
from runledger.postgres.connection import Conn, savepoint, writing
from runledger.postgres.enqueue import payload_limit
from runledger.postgres.ids import parse_id
from runledger.postgres.workflow import StepOutcome, advance

LOCK_STEP = """
select id, kind, status, output, error
from runledger.workflow_step_runs
where workflow_run_id = %(run_id)s and step_key = %(step_key)s
for no key update
"""


def complete_external_step(
    conn: Conn,
    run_id: uuid.UUID,
    step_key: str,
    output: JsonValue = None,
    *,
    max_payload_bytes: int | None = None,
) -> bool:
    """Mark a waiting external step succeeded with ``output``, releasing its dependents.

    Runs in the caller's transaction (see ``runledger.enqueue``). Returns True when this
    call completed the step, False when it had already been completed with the same output.

    ``output`` is held to the payload size limit, ``max_payload_bytes`` as in ``enqueue``.

    Raises:
        InvalidId: ``run_id`` is not a UUID; nothing was sent.
        PayloadNotSerializable: ``output`` is not plain JSON.
        PayloadTooLarge: ``output`` is over the payload size limit.
        NulInText / SurrogateInText / TextTooLong: ``step_key`` cannot name a step.
        StepNotFound / NotAnExternalStep: no such step, or it runs a job.
        StepNotWaiting: the step is blocked or was cancelled (``status`` says which).
        ExternalStepConflict: it already succeeded with another output, or failed.
        SchemaNotMigrated: the schema is not installed (the caller's transaction is usable).
    """
    check_json(output, root="$output")
    dumps_within(output, limit=payload_limit(max_payload_bytes), root="$output")
    return _signal(conn, run_id, step_key, StepStatus.SUCCEEDED, output=output, error=None)


def fail_external_step(conn: Conn, run_id: uuid.UUID, step_key: str, reason: str) -> bool:
    """Mark a waiting external step failed; steps that needed it to succeed are cancelled.

    Same transaction rules, return value and errors as ``complete_external_step``; ``reason``
    may not hold NUL or a lone surrogate.
    """
    check_text("reason", reason)
    return _signal(conn, run_id, step_key, StepStatus.FAILED, output=None, error=reason)


def _signal(
    conn: Conn,
    run_id: uuid.UUID,
    step_key: str,
    status: StepStatus,
    *,
    output: JsonValue,
    error: str | None,
) -> bool:
    run_id = parse_id(run_id, field="run_id")
    check_text("step_key", step_key)
    with writing(conn), savepoint(conn, "runledger_external"):
        row = conn.execute(LOCK_STEP, {"run_id": run_id, "step_key": step_key}).fetchone()
        if row is None:
            raise StepNotFound(run_id=run_id, step_key=step_key)
        step_id, kind, current, existing_output, existing_error = row
        if kind != StepKind.EXTERNAL:
            raise NotAnExternalStep(run_id=run_id, step_key=step_key, kind=kind)
        if current in (StepStatus.SUCCEEDED, StepStatus.FAILED):
            same = current == status and (
                existing_output == output if status is StepStatus.SUCCEEDED
                else existing_error == error
            )  # fmt: skip
            if same:
                return False
            raise ExternalStepConflict(
                run_id=run_id, step_key=step_key, status=current, existing_output=existing_output
            )
        if current != StepStatus.WAITING:
            raise StepNotWaiting(run_id=run_id, step_key=step_key, status=current)
        advance(conn, [StepOutcome(step_id=step_id, status=status, output=output, error=error)])
        return True
