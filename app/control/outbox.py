"""Writes of outcomes into the registry that are never lost to a failed call.

Every outcome (a switch, a rollout's step and result, the previous champion) is written
back into MLflow. A write that fails is noted (:meth:`ControlMemory.note_error`) and kept
here; :meth:`Outbox.retry` sends what is pending again at every reconcile pass. A newer
write of the same tag replaces a pending older one, so a late retry never overwrites a
newer value.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.control.memory import ControlMemory
from app.control.ports import RegistryPort


@dataclass(frozen=True)
class _Pending:
    kind: str  # "version_tag", "model_tag" or "remove_role"
    model: str
    version: str
    key: str
    value: str


class Outbox:
    def __init__(self, registry: RegistryPort, memory: ControlMemory) -> None:
        self._registry = registry
        self._memory = memory
        #: (kind, model, version, key) -> the newest write not yet done
        self._pending: dict[tuple[str, str, str, str], _Pending] = {}

    def pending(self) -> list[tuple[str, str, str, str, str]]:
        """What waits to be written: ``(kind, model, version, key, value)``, oldest first."""
        return [(p.kind, p.model, p.version, p.key, p.value) for p in self._pending.values()]

    async def tag_version(self, model: str, version: str, tags: dict[str, str]) -> bool:
        """Set tags on a version; True once the registry has them."""
        done = True
        for key, value in tags.items():
            done = await self._send(_Pending("version_tag", model, version, key, value)) and done
        return done

    async def tag_model(self, model: str, key: str, value: str) -> bool:
        return await self._send(_Pending("model_tag", model, "", key, value))

    async def remove_role(self, model: str, role: str, version: str, source: str) -> bool:
        """Take ``role`` from ``version`` (the registry client leaves a role that has
        moved on to another version alone, so a late retry cannot undo a newer change)."""
        return await self._send(_Pending("remove_role", model, version, role, source))

    async def retry(self) -> None:
        for pending in list(self._pending.values()):
            await self._send(pending, retrying=True)

    async def _send(self, write: _Pending, retrying: bool = False) -> bool:
        slot = (write.kind, write.model, write.version, write.key)
        if not retrying:
            self._pending.pop(slot, None)  # a newer value supersedes a pending one
        elif self._pending.get(slot) is not write:
            return True  # superseded while waiting
        try:
            await self._write(write)
        except Exception as exc:
            if not retrying:
                self._memory.note_error(
                    f"registry write {write.kind} {write.key}", exc, write.model,
                    write.version or None, then="kept, and written again at the next pass",
                )  # fmt: skip
            self._pending[slot] = write
            return False
        if self._pending.get(slot) is write:
            del self._pending[slot]
        return True

    async def _write(self, write: _Pending) -> None:
        if write.kind == "version_tag":
            await self._registry.tag_version(write.model, write.version, {write.key: write.value})
        elif write.kind == "model_tag":
            await self._registry.tag_model(write.model, write.key, write.value)
        else:
            await self._registry.remove_role(write.model, write.key, write.version, write.value)
