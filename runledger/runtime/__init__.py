"""The runtime: registry, worker pool, heartbeat, listener, reaper, scheduler, hooks."""

from runledger.runtime.context import JobContext
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.registry import Handler, Registry
from runledger.runtime.runtime import Runtime
from runledger.runtime.wait import wait_for_run

__all__ = ["Handler", "JobContext", "LifecycleEvent", "Registry", "Runtime", "wait_for_run"]
