"""The runtime's log lines: one at start, one at stop, one per job outcome, and the JSON
format for log shippers.

Job outcomes are logged by ``JobLog``, a subscriber of the runtime's ``EventStream``, on the
logger ``runledger.jobs`` (silence it with ``logging.getLogger("runledger.jobs")
.setLevel(logging.WARNING)``); start and stop on ``runledger.runtime``. Every job line carries
the job's fields (``JOB_FIELDS``) as record attributes, which ``JsonFormatter`` writes out.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runledger.core.job import DEFAULT_QUEUE
from runledger.core.status import EventKind
from runledger.errors import ConfigError
from runledger.runtime.events import LostLease
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.registry import Registry

jobs_logger = logging.getLogger("runledger.jobs")
runtime_logger = logging.getLogger("runledger.runtime")

JOB_FIELDS: Final = ("job_id", "job_type", "queue", "attempt", "run_id", "step_key")
"""The record attributes a job's log lines carry (``ctx.logger``'s too), when known."""

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"

TIMED_OUT_PREFIX = "TimedOut:"

# The lowest level at which JobLog writes a line for each kind: a retry that timed out is an
# ERROR line, and only the event tells whether it did.
_LEVELS: Final = {
    EventKind.JOB_STARTED: logging.DEBUG,
    EventKind.JOB_SUCCEEDED: logging.INFO,
    EventKind.JOB_SNOOZED: logging.INFO,
    EventKind.JOB_RETRYING: logging.ERROR,
    EventKind.JOB_FAILED: logging.ERROR,
    EventKind.JOB_CANCELLED: logging.WARNING,
}


def _one_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 500 else line[:500] + "..."


def _fields(event: LifecycleEvent) -> dict[str, Any]:
    return {
        "job_id": None if event.job_id is None else str(event.job_id),
        "job_type": event.job_type,
        "queue": event.queue,
        "attempt": event.attempt,
        "run_id": None if event.workflow_run_id is None else str(event.workflow_run_id),
        "step_key": event.step_key,
    }


def _lost_fields(lost: LostLease) -> dict[str, Any]:
    return {
        "job_id": str(lost.job_id),
        "job_type": lost.job_type,
        "queue": lost.queue,
        "attempt": lost.attempt,
        "run_id": None if lost.workflow_run_id is None else str(lost.workflow_run_id),
        "step_key": lost.step_key,
    }


def _attempt(event: LifecycleEvent) -> str:
    if event.max_attempts is None:
        return f"attempt {event.attempt}"
    return f"attempt {event.attempt}/{event.max_attempts}"


class JobLog:
    """Logs one line per job outcome; a subscriber of the runtime's ``EventStream``.

    - ``job.succeeded``: INFO, with the handler's duration;
    - ``job.snoozed``: INFO, the attempt and when it runs again;
    - ``job.retrying``: WARNING, the error in one line, the attempt and when it runs again
      (ERROR with the traceback when the attempt timed out);
    - ``job.failed`` (dead letter): ERROR, with the traceback;
    - ``job.cancelled``: WARNING; ``job.started``: DEBUG;
    - a lease of this runtime's attempt that its heartbeat found lost (``lost_leases``):
      WARNING. One its reaper took back is told by the outcome line of the reaper's write.

    The levels are checked once per batch: nothing is built for a disabled level. ``wants``
    tells the ``EventStream`` which kinds the logger's level lets through now, so that no
    ``job.started`` event is built for a logger above DEBUG.
    """

    def __init__(self, logger: logging.Logger = jobs_logger) -> None:
        self._logger = logger

    def wants(self, kind: EventKind) -> bool:
        """True if an event of ``kind`` may make a line at the logger's level now
        (``Logger.isEnabledFor``, which ``logging`` caches until a level changes)."""
        level = _LEVELS.get(kind)
        return level is not None and self._logger.isEnabledFor(level)

    def __call__(self, events: list[LifecycleEvent]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.ERROR):
            return
        warning = logger.isEnabledFor(logging.WARNING)
        info = warning and logger.isEnabledFor(logging.INFO)
        debug = info and logger.isEnabledFor(logging.DEBUG)
        for event in events:
            kind = event.kind
            if kind is EventKind.JOB_SUCCEEDED:
                if info:
                    self._succeeded(event)
            elif kind is EventKind.JOB_SNOOZED:
                if info:
                    self._snoozed(event)
            elif kind is EventKind.JOB_RETRYING:
                timed_out = (event.error or "").startswith(TIMED_OUT_PREFIX)
                if timed_out or warning:
                    self._retrying(event, timed_out)
            elif kind is EventKind.JOB_FAILED:
                self._failed(event)
            elif kind is EventKind.JOB_CANCELLED:
                if warning:
                    logger.warning(
                        "%s[%s] cancelled (%s)", event.job_type, event.job_id, _attempt(event),
                        extra=_fields(event),
                    )  # fmt: skip
            elif kind is EventKind.JOB_STARTED and debug:
                logger.debug(
                    "%s[%s] started (%s)", event.job_type, event.job_id, _attempt(event),
                    extra=_fields(event),
                )  # fmt: skip

    def lost_leases(self, leases: list[LostLease]) -> None:
        """One WARNING line per attempt of this runtime whose lease its heartbeat found lost."""
        if not self._logger.isEnabledFor(logging.WARNING):
            return
        for lost in leases:
            if not lost.mine or lost.found_by != "heartbeat":
                continue
            attempt = (
                f"attempt {lost.attempt}"
                if lost.max_attempts is None
                else f"attempt {lost.attempt}/{lost.max_attempts}"
            )
            self._logger.warning(
                "%s[%s] lost its lease (%s; the job is %s now): its handler is told to stop "
                "(ctx.cancelled) and its outcome will not be written",
                lost.job_type, lost.job_id, attempt, lost.status or "gone",
                extra=_lost_fields(lost),
            )  # fmt: skip

    def _succeeded(self, event: LifecycleEvent) -> None:
        if event.duration is None:
            self._logger.info(
                "%s[%s] succeeded", event.job_type, event.job_id, extra=_fields(event)
            )
        else:
            self._logger.info(
                "%s[%s] succeeded in %.3fs", event.job_type, event.job_id, event.duration,
                extra=_fields(event),
            )  # fmt: skip

    def _snoozed(self, event: LifecycleEvent) -> None:
        retry_at = "" if event.retry_at is None else event.retry_at.isoformat(timespec="seconds")
        self._logger.info(
            "%s[%s] snoozed (%s, not counted), runs again at %s", event.job_type,
            event.job_id, _attempt(event), retry_at, extra=_fields(event),
        )  # fmt: skip

    def _retrying(self, event: LifecycleEvent, timed_out: bool) -> None:
        retry_at = "" if event.retry_at is None else event.retry_at.isoformat(timespec="seconds")
        if timed_out:
            self._logger.error(
                "%s[%s] timed out (%s), will retry at %s: %s\n%s", event.job_type,
                event.job_id, _attempt(event), retry_at, _one_line(event.error),
                (event.traceback or "").rstrip(), extra=_fields(event),
            )  # fmt: skip
            return
        self._logger.warning(
            "%s[%s] failed (%s), will retry at %s: %s", event.job_type, event.job_id,
            _attempt(event), retry_at, _one_line(event.error), extra=_fields(event),
        )  # fmt: skip

    def _failed(self, event: LifecycleEvent) -> None:
        what = "timed out" if (event.error or "").startswith(TIMED_OUT_PREFIX) else "failed"
        self._logger.error(
            "%s[%s] %s (%s), dead-lettered: %s\n%s", event.job_type, event.job_id, what,
            _attempt(event), _one_line(event.error), (event.traceback or "").rstrip(),
            extra=_fields(event),
        )  # fmt: skip


def safe_conninfo(conninfo: str) -> str:
    """``conninfo`` without its password (for logs)."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "<unparsable conninfo>"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def handlers_by_queue(registry: Registry) -> dict[str, list[str]]:
    """The registered job types by their handler's default queue (``default`` if none)."""
    by_queue: dict[str, list[str]] = {}
    for job_type in registry.job_types():
        defaults = registry.handler_defaults(job_type)
        queue = (defaults.queue if defaults is not None else None) or DEFAULT_QUEUE
        by_queue.setdefault(queue, []).append(job_type)
    return by_queue


def log_start(
    *,
    version: str,
    worker_id: str,
    queues: Sequence[str],
    registry: Registry,
    concurrency: int,
    prefetch: int,
    listen: bool,
    conninfo: str,
) -> None:
    """The start line, and a warning per handler whose default queue is not consumed."""
    by_queue = handlers_by_queue(registry)
    handlers = "; ".join(
        f"{queue}: {', '.join(by_queue.get(queue, ())) or '(no handler defaults here)'}"
        for queue in queues
    )
    runtime_logger.info(
        "runledger %s worker %s started: queues %s; handlers %s; concurrency %d, prefetch %d, "
        "%s; database %s",
        version, worker_id, ",".join(queues), handlers or "(none)", concurrency, prefetch,
        "LISTEN" if listen else "polling", safe_conninfo(conninfo),
    )  # fmt: skip
    for queue, job_types in sorted(by_queue.items()):
        if queue in queues:
            continue
        for job_type in job_types:
            runtime_logger.warning(
                "handler %s defaults to queue %r, which this worker does not consume "
                "(queues: %s): its jobs wait for a worker started with --queues %s",
                job_type, queue, ",".join(queues), queue,
            )  # fmt: skip


def log_stop(worker_id: str, *, drained: int, released: int, abandoned: int) -> None:
    """The stop line: handlers that finished during the drain, prefetched jobs handed back,
    handlers still running at the deadline (their leases expired for the reaper)."""
    level = logging.WARNING if abandoned else logging.INFO
    runtime_logger.log(
        level,
        "worker %s stopped: drained %d running handlers, released %d prefetched jobs, "
        "abandoned %d still running (leases expired, to be retried)",
        worker_id, drained, released, abandoned,
    )  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message, the job's fields
    (``JOB_FIELDS``) when the record has them, and ``exc_info`` as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for field in JOB_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value if isinstance(value, (int, float)) else str(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def check_log_format(value: str, *, name: str = "--log-format") -> str:
    """``value`` lowered if it is a known format.

    Raises:
        ConfigError: not one of ``LOG_FORMATS``.
    """
    lowered = value.strip().lower()
    if lowered not in LOG_FORMATS:
        raise ConfigError(name=name, value=value, expected="text or json")
    return lowered


def log_format_from_env(env: Mapping[str, Any] | None = None) -> str | None:
    """``RUNLEDGER_LOG_FORMAT`` (``text`` or ``json``) of ``env`` (default: the environment;
    a Flask config or Django settings mapping works too), or None if unset.

    Not a ``Runtime`` argument: the worker commands read it beside ``RUNTIME_VARIABLES``.

    Raises:
        ConfigError: another value.
    """
    raw = (os.environ if env is None else env).get("RUNLEDGER_LOG_FORMAT")
    if raw is None or raw == "":
        return None
    return check_log_format(str(raw), name="RUNLEDGER_LOG_FORMAT")


def configure_logging(level: int | str, log_format: str = "text") -> None:
    """Set up the root logger for a worker process: ``text`` (one line per record) or
    ``json`` (``JsonFormatter``) on stderr, at ``level``."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    logging.basicConfig(level=level, handlers=[stream_handler(log_format)])


def stream_handler(log_format: str = "text") -> logging.Handler:
    """A stderr handler writing ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
