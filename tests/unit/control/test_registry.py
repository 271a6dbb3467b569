"""app/control/registry.py: choose_champion decides which version serves."""

from __future__ import annotations

import random

import pytest

from app.control.registry import Desired, RegisteredVersion, choose_champion, desired_roles


def rv(version: str, stage: str | None = None, *aliases: str) -> RegisteredVersion:
    return RegisteredVersion(version=version, stage=stage, aliases=tuple(aliases))


def test_alias_champion_wins_over_stage_production() -> None:
    versions = [rv("1", "Production"), rv("2", None, "champion"), rv("3", "Production")]
    assert choose_champion(versions) == Desired("2", "alias:champion")


def test_alias_champion_wins_even_on_an_archived_version() -> None:
    versions = [rv("4", "Archived", "champion"), rv("5", "Production")]
    assert choose_champion(versions) == Desired("4", "alias:champion")


def test_alias_champion_alongside_other_aliases() -> None:
    versions = [rv("1", None, "challenger"), rv("2", None, "shadow", "champion")]
    assert choose_champion(versions) == Desired("2", "alias:champion")


def test_newest_production_version_when_no_alias() -> None:
    versions = [rv("1", "Production"), rv("3", "Production"), rv("2", "Production")]
    assert choose_champion(versions) == Desired("3", "stage:Production")


def test_newest_production_is_by_number_not_by_string() -> None:
    # As strings "9" > "10"; version numbers must compare as integers.
    versions = [rv("9", "Production"), rv("10", "Production")]
    assert choose_champion(versions) == Desired("10", "stage:Production")


def test_newer_versions_in_other_stages_do_not_count() -> None:
    versions = [rv("1", "Production"), rv("2", "Staging"), rv("3", None, "challenger")]
    assert choose_champion(versions) == Desired("1", "stage:Production")


@pytest.mark.parametrize(
    "versions",
    [
        [],
        [rv("1")],
        [rv("1", "Staging"), rv("2", "Archived")],
        [rv("1", None, "challenger"), rv("2", None, "shadow")],
        [rv("1", "production")],  # stage names are case-sensitive in MLflow
    ],
)
def test_no_champion_when_neither_alias_nor_production(
    versions: list[RegisteredVersion],
) -> None:
    assert choose_champion(versions) is None


@pytest.mark.parametrize("seed", range(5))
def test_choice_does_not_depend_on_input_order(seed: int) -> None:
    versions = [rv(str(n), "Production") for n in range(1, 12)] + [rv("12", "Staging")]
    random.Random(seed).shuffle(versions)
    assert choose_champion(versions) == Desired("11", "stage:Production")
    versions.append(rv("13", None, "champion"))
    random.Random(seed).shuffle(versions)
    assert choose_champion(versions) == Desired("13", "alias:champion")


def test_roles_from_aliases() -> None:
    roles = desired_roles(
        [rv("1", None, "champion"), rv("2", None, "challenger"), rv("3", None, "shadow")]
    )
    assert roles == {
        "champion": Desired("1", "alias:champion"),
        "challenger": Desired("2", "alias:challenger"),
        "shadow": Desired("3", "alias:shadow"),
    }


def test_staging_is_challenger_for_users_of_stages() -> None:
    roles = desired_roles([rv("1", "Production"), rv("2", "Staging"), rv("3", "Staging")])
    assert roles["champion"] == Desired("1", "stage:Production")
    assert roles["challenger"] == Desired("3", "stage:Staging")
    assert "shadow" not in roles


def test_alias_challenger_wins_over_staging_and_the_champion_holds_no_other_role() -> None:
    roles = desired_roles([rv("1", "Staging", "champion", "shadow"), rv("2", None, "challenger")])
    assert roles["challenger"] == Desired("2", "alias:challenger")
    assert "shadow" not in roles  # v1 is the champion already
    assert desired_roles([rv("1", "Staging", "champion")]) == {
        "champion": Desired("1", "alias:champion")
    }
