"""The MLflow Model Registry, as modellane reads it.

The one place that decides which version of a model should serve
(:func:`choose_champion`); the watcher calls it, nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app import constants


@dataclass(frozen=True)
class RegisteredVersion:
    """What modellane needs to know of one MLflow model version."""

    version: str
    stage: str | None = None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Desired:
    """The version a role should be served by, and where that came from."""

    version: str
    source: str


def choose_champion(versions: list[RegisteredVersion]) -> Desired | None:
    """The champion: the version holding alias ``champion``; where no version holds it,
    the newest version in stage ``Production``; else none."""
    for v in versions:
        if constants.ROLE_CHAMPION in v.aliases:
            return Desired(v.version, f"alias:{constants.ROLE_CHAMPION}")
    production = [v for v in versions if v.stage == constants.STAGE_PRODUCTION]
    if production:
        newest = max(production, key=lambda v: int(v.version))
        return Desired(newest.version, f"stage:{constants.STAGE_PRODUCTION}")
    return None


@dataclass(frozen=True)
class ChampionSignals:
    """The two ways a registry names the champion: alias ``champion`` and the newest
    version in stage ``Production``."""

    alias: str | None
    stage: str | None

    @classmethod
    def of(cls, versions: list[RegisteredVersion]) -> ChampionSignals:
        alias = next((v.version for v in versions if constants.ROLE_CHAMPION in v.aliases), None)
        production = [int(v.version) for v in versions if v.stage == constants.STAGE_PRODUCTION]
        return cls(alias, str(max(production)) if production else None)

    @property
    def disagree(self) -> bool:
        return self.alias is not None and self.stage is not None and self.alias != self.stage


def newer_signal(now: ChampionSignals, before: ChampionSignals | None) -> str | None:
    """Where alias and stage name different champions: the one changed last ("stage"
    when only the stage moved since ``before``, the last read), else "alias" (it moved,
    or the order cannot be told: a first read). None where they agree."""
    if not now.disagree:
        return None
    if before is not None and now.stage != before.stage and now.alias == before.alias:
        return "stage"
    return "alias"


def desired_roles(versions: list[RegisteredVersion]) -> dict[str, Desired]:
    """Every role's version: ``champion`` (see :func:`choose_champion`); ``challenger``
    from alias ``challenger``, else the newest version in stage ``Staging``; ``shadow`` from
    alias ``shadow``. A role held by the champion's own version is left out."""
    roles: dict[str, Desired] = {}
    champion = choose_champion(versions)
    if champion is not None:
        roles[constants.ROLE_CHAMPION] = champion
    for role, stage in (
        (constants.ROLE_CHALLENGER, constants.STAGE_STAGING),
        (constants.ROLE_SHADOW, None),
    ):
        found: Desired | None = None
        for v in versions:
            if role in v.aliases:
                found = Desired(v.version, f"alias:{role}")
        if found is None and stage is not None:
            staged = [v for v in versions if v.stage == stage]
            if staged:
                newest = max(staged, key=lambda v: int(v.version))
                found = Desired(newest.version, f"stage:{stage}")
        if found is not None and (champion is None or found.version != champion.version):
            roles[role] = found
    return roles


#: Where the registry watcher writes live quality, one run per model version.
QUALITY_EXPERIMENT = "modellane-live-quality"


class RegistryClient:
    """Reads registered models and versions from an MLflow tracking server."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient  # imported here: mlflow is slow to import

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def versions(self, name: str) -> list[RegisteredVersion]:
        """Every version of ``name`` with its aliases and stage.

        Raises:
            LookupError: no registered model of that name.
        """
        from mlflow.exceptions import MlflowException

        try:
            model = self._client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise LookupError(f"no registered model named {name!r}") from exc
            raise
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        found = self._client.search_model_versions(f"name = '{name}'")
        return sorted(
            (
                RegisteredVersion(
                    version=str(mv.version),
                    stage=mv.current_stage if mv.current_stage not in (None, "None") else None,
                    aliases=tuple(sorted(aliases_by_version.get(str(mv.version), []))),
                    tags=dict(mv.tags or {}),
                )
                for mv in found
            ),
            key=lambda v: int(v.version),
        )

    def discover(self, tag: str) -> list[str]:
        """Names of the registered models whose tag ``tag`` is ``true`` (any case)."""
        found: list[str] = []
        token: str | None = None
        while True:
            page = self._client.search_registered_models(max_results=1000, page_token=token)
            found += [m.name for m in page if str((m.tags or {}).get(tag, "")).lower() == "true"]
            token = page.token
            if not token:
                return sorted(found)

    def champion(self, name: str) -> Desired | None:
        """The version of ``name`` that should serve as champion, if any."""
        return choose_champion(self.versions(name))

    # -- writes: every outcome goes back into the registry -------------------------------

    def set_champion(self, name: str, version: str) -> None:
        """Move alias ``champion`` to ``version`` (a promotion or a rollback)."""
        self._client.set_registered_model_alias(name, constants.ROLE_CHAMPION, version)

    def remove_role(self, name: str, role: str, version: str, source: str) -> None:
        """Take ``role`` away from ``version`` the way it was given: delete the alias, or
        move the version out of its stage (to ``Archived``).

        An alias that has moved on to another version is left alone, so a retried removal
        never undoes a newer change.
        """
        from mlflow.exceptions import MlflowException

        if source.startswith("stage:"):
            self._client.transition_model_version_stage(name, version, "Archived")
            return
        try:
            holder = self._client.get_model_version_by_alias(name, role)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return  # no version holds the alias any more
            raise
        if str(holder.version) == version:
            self._client.delete_registered_model_alias(name, role)

    def promote(self, name: str, version: str, champion_source: str | None) -> None:
        """Make ``version`` the champion the way the champion is chosen now: by alias, or
        (for users of stages) by stage ``Production``."""
        if champion_source is not None and champion_source.startswith("stage:"):
            self._client.transition_model_version_stage(
                name, version, constants.STAGE_PRODUCTION, archive_existing_versions=True
            )
        else:
            self.set_champion(name, version)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_model_version_tag(name, version, key, value)

    def tag_model(self, name: str, key: str, value: str) -> None:
        self._client.set_registered_model_tag(name, key, value)

    def untag_version(self, name: str, version: str, key: str) -> None:
        """Delete a version's tag (none there is no error)."""
        if key in self.version_tags(name, version):
            self._client.delete_model_version_tag(name, version, key)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self._client.get_model_version(name, version).tags or {})

    def model_tag(self, name: str, key: str) -> str | None:
        tags = self._client.get_registered_model(name).tags or {}
        value = tags.get(key)
        return str(value) if value is not None else None

    def log_quality(self, name: str, version: str, metrics: dict[str, float], at: float) -> str:
        """Write a version's live quality as metrics of its quality run, made on first use
        (experiment ``modellane-live-quality``) and linked from the version's tag
        ``modellane.quality_run``, so the MLflow UI plots it over time. Returns the run id."""
        from mlflow.entities import Metric

        tags = self.version_tags(name, version)
        run_id = tags.get(constants.TAG_QUALITY_RUN)
        if not run_id:
            run_id = self._quality_run(name, version)
            self._client.set_model_version_tag(name, version, constants.TAG_QUALITY_RUN, run_id)
        stamp = int(at * 1000)
        self._client.log_batch(
            run_id, metrics=[Metric(key, value, stamp, 0) for key, value in metrics.items()]
        )
        return run_id

    def _quality_run(self, name: str, version: str) -> str:
        run = self._client.create_run(
            experiment_id(self._client, QUALITY_EXPERIMENT),
            run_name=f"{name}-v{version}-live",
            tags={
                "modellane.model": name,
                "modellane.version": version,
                "mlflow.note.content": f"Live quality of {name} version {version} from "
                "labelled predictions (modellane feedback), written by the registry watcher.",
            },
        )
        return str(run.info.run_id)


def experiment_id(client: Any, name: str) -> str:
    """The id of MLflow experiment ``name``, made on first use (two writers racing to make
    it both end up with the one that exists)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)
