"""What every part of the control plane works with, handed to each in one piece."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.control.memory import ControlMemory
from app.control.outbox import Outbox
from app.control.ports import QualityPort, RegistryPort, ServePort
from app.control.publisher import Publisher


@dataclass(frozen=True)
class ControlContext:
    memory: ControlMemory
    serve: ServePort
    registry: RegistryPort
    #: registry writes of outcomes, kept and retried when they fail
    outbox: Outbox
    publisher: Publisher
    #: reconcile now instead of at the next poll
    wake: Callable[[], None]
    #: labels and live quality; None where no inference log is configured
    quality: QualityPort | None = None
