"""Model roles in the test registry: record them, set them, put them back, and wait until a
gateway serves what the registry says.

Every integration test that moves an alias, a stage or a ``modellane.*`` tag leaves the
registry as it found it, and waits (polling, with a deadline) until the watcher follows:
the next test starts from the same registry and the same routing, whatever ran before.
The watcher's memory (events, the previous champion, finished rollouts) is a cache and is
not restored; tests read what they need of it from their own start (``since``) on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from app import constants
from tests.helpers import wait_for

#: The roles the watcher serves, and the stage each falls back to (no alias).
ROLE_STAGES = {
    constants.ROLE_CHAMPION: constants.STAGE_PRODUCTION,
    constants.ROLE_CHALLENGER: constants.STAGE_STAGING,
    constants.ROLE_SHADOW: None,
}
NO_STAGE = "None"


class _Keep:
    """Leave the role as it is (the default of :meth:`Roles.set`)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class ModelRecord:
    """What the registry holds of one model that steers serving."""

    name: str
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    stages: dict[str, str] = field(default_factory=dict)  # version -> stage, "None" left out
    model_tags: dict[str, str] = field(default_factory=dict)  # modellane.* only
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # modellane.* only

    def expected(self) -> dict[str, str | None]:
        """The version each role should be served by, as the watcher decides it (alias first,
        then the newest version in the role's stage; a role held by the champion is none)."""
        roles: dict[str, str | None] = {}
        for role, stage in ROLE_STAGES.items():
            version = self.aliases.get(role)
            if version is None and stage is not None:
                staged = [int(v) for v, s in self.stages.items() if s == stage]
                version = str(max(staged)) if staged else None
            roles[role] = version
        champion = roles[constants.ROLE_CHAMPION]
        for role in (constants.ROLE_CHALLENGER, constants.ROLE_SHADOW):
            if roles[role] == champion:
                roles[role] = None
        return roles


def _ours(tags: dict[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (tags or {}).items() if k.startswith(constants.TAG_PREFIX)}


class Roles:
    """Reads and writes model roles in the registry at ``registry``, and waits until the
    gateway behind ``admin`` (a client with an admin key) serves them."""

    def __init__(self, registry: str, admin: httpx.Client) -> None:
        self.mlflow = MlflowClient(tracking_uri=registry, registry_uri=registry)
        self.admin = admin

    # -- reading ------------------------------------------------------------------------

    def snapshot(self, names: tuple[str, ...] | list[str]) -> dict[str, ModelRecord]:
        """The registry's record of every model in ``names`` (two calls, whatever the count)."""
        wanted = set(names)
        models = {m.name: m for m in self.mlflow.search_registered_models(max_results=1000)}
        versions: dict[str, list[Any]] = {}
        for mv in self.mlflow.search_model_versions(max_results=10000):
            if mv.name in wanted:
                versions.setdefault(mv.name, []).append(mv)
        records = {}
        for name in sorted(wanted & set(models)):
            model = models[name]
            records[name] = ModelRecord(
                name=name,
                aliases={a: str(v) for a, v in (model.aliases or {}).items()},
                stages={
                    str(mv.version): str(mv.current_stage)
                    for mv in versions.get(name, [])
                    if str(mv.current_stage) != NO_STAGE
                },
                model_tags=_ours(model.tags),
                version_tags={str(mv.version): _ours(mv.tags) for mv in versions.get(name, [])},
            )
        return records

    def record(self, name: str) -> ModelRecord:
        return self.snapshot([name])[name]

    def status(self, name: str) -> dict[str, Any]:
        answer = self.admin.get(f"/admin/models/{name}", timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def serves(self, name: str, expected: dict[str, str | None]) -> bool:
        """Whether the gateway serves ``expected`` (role -> version or None) for ``name``."""
        status = self.status(name)
        served = {
            constants.ROLE_CHAMPION: status["serving_version"],
            constants.ROLE_CHALLENGER: (status["challenger"] or {}).get("version"),
            constants.ROLE_SHADOW: (status["shadow"] or {}).get("version"),
        }
        return served == expected

    # -- writing ------------------------------------------------------------------------

    def set(
        self,
        name: str,
        *,
        champion: str | None = KEEP,
        challenger: str | None = KEEP,
        shadow: str | None = KEEP,
        stages: dict[str, str] | None = None,
        timeout_s: float = 300,
    ) -> ModelRecord:
        """Give each role given here to a version (``None``: take the alias away), move the
        ``stages`` given (version -> stage), then wait until the gateway serves the roles
        the registry now names. Returns the registry's record after the change."""
        for role, version in (
            (constants.ROLE_CHAMPION, champion),
            (constants.ROLE_CHALLENGER, challenger),
            (constants.ROLE_SHADOW, shadow),
        ):
            if version is KEEP:
                continue
            if version is None:
                with contextlib.suppress(MlflowException):  # not set
                    self.mlflow.delete_registered_model_alias(name, role)
            else:
                self.mlflow.set_registered_model_alias(name, role, version)
        for version, stage in (stages or {}).items():
            self._stage(name, version, stage)
        record = self.record(name)
        self.reload()
        expected = record.expected()
        wait_for(lambda: self.serves(name, expected), timeout_s, f"{name} served as {expected}")
        return record

    def without_previous(self, names: tuple[str, ...] | list[str]) -> str:
        """The first model of ``names`` with no previous champion to roll back to: none in
        the watcher's memory (not switched within ``keep_previous_s``) and, its tag
        ``modellane.previous_champion`` deleted here, none in the registry."""
        for name in names:
            if self.status(name)["previous_version"] is None:
                self.delete_model_tag(name, constants.TAG_PREVIOUS_CHAMPION)
                return name
        raise AssertionError(f"each of {list(names)} has a previous champion")

    def delete_model_tag(self, name: str, key: str) -> None:
        with contextlib.suppress(MlflowException):  # not set
            self.mlflow.delete_registered_model_tag(name, key)

    def reload(self) -> None:
        self.admin.post("/admin/reload", timeout=10)

    def restore(self, saved: dict[str, ModelRecord], timeout_s: float = 300) -> list[str]:
        """Put the registry back as ``saved`` says and wait until the gateway serves it.

        Applied in passes until one finds nothing to change and the gateway serves every
        model that was changed: the watcher writes tags of its own as it follows (a switch,
        an aborted rollout), and those go too. Returns the names of the models changed."""
        changed: set[str] = set()
        clean: list[bool] = []

        def settled() -> bool:
            now = self.snapshot(list(saved))
            moved = [name for name, record in saved.items() if now.get(name) != record]
            for name in moved:
                self._put_back(now[name], saved[name])
            changed.update(moved)
            if moved:
                self.reload()
                clean.clear()
                return False
            if not all(self.serves(name, saved[name].expected()) for name in sorted(changed)):
                clean.clear()
                return False
            clean.append(True)
            # After a change, twice in a row: no tag write of the watcher still in flight.
            return not changed or len(clean) >= 2

        wait_for(settled, timeout_s, f"the registry and the gateway back as before for {saved}")
        return sorted(changed)

    def _put_back(self, now: ModelRecord, saved: ModelRecord) -> None:
        name = saved.name
        # Tags first: a role given back reads them (weight, rollout, policy, fraction).
        for key in now.model_tags.keys() - saved.model_tags.keys():
            self.delete_model_tag(name, key)
        for key, value in saved.model_tags.items():
            if now.model_tags.get(key) != value:
                self.mlflow.set_registered_model_tag(name, key, value)
        for version, tags in now.version_tags.items():
            before = saved.version_tags.get(version, {})
            for key in tags.keys() - before.keys():
                with contextlib.suppress(MlflowException):
                    self.mlflow.delete_model_version_tag(name, version, key)
            for key, value in before.items():
                if tags.get(key) != value:
                    self.mlflow.set_model_version_tag(name, version, key, value)
        for version in now.stages.keys() | saved.stages.keys():
            stage = saved.stages.get(version, NO_STAGE)
            if now.stages.get(version, NO_STAGE) != stage:
                self._stage(name, version, stage)
        for alias in now.aliases.keys() - saved.aliases.keys():
            with contextlib.suppress(MlflowException):
                self.mlflow.delete_registered_model_alias(name, alias)
        for alias, version in saved.aliases.items():
            if now.aliases.get(alias) != version:
                self.mlflow.set_registered_model_alias(name, alias, version)

    def _stage(self, name: str, version: str, stage: str) -> None:
        self.mlflow.transition_model_version_stage(
            name, version, stage, archive_existing_versions=False
        )
