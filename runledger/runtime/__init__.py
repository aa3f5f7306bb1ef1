"""The runtime: the handler registry (workers, scheduler and reaper arrive with the runtime)."""

from runledger.runtime.registry import Handler, Registry

__all__ = ["Handler", "Registry"]
