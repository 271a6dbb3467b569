"""Approvals before production: the rules, as pure functions of the registry's tags.

A model with ``require_approval`` serves a new champion only once that version is
approved: by a key with the ``approve`` scope (``POST /admin/models/{name}/versions/
{version}/approve``, ``modellane approve``), stored on the version as the
``modellane.approved_*`` tags. A version that takes alias ``champion`` or stage
``Production`` without one gets no traffic: the serving champion keeps its role, and the
version is tagged ``modellane.blocked`` with the reason (:func:`gate`).

A version that served as champion before (``modellane.switched_at``) needs no new
approval: rolling back to it must never wait for one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from app import constants
from app.control.registry import Desired, RegisteredVersion

TAG_APPROVED_BY = "modellane.approved_by"  # the approving key's name
TAG_APPROVED_AT = "modellane.approved_at"
TAG_APPROVAL_NOTE = "modellane.approval_note"
TAG_BLOCKED = "modellane.blocked"  # why the version took the champion role and got no traffic
#: The key that moved alias champion to the version through the admin API (four-eyes).
TAG_PROMOTED_BY = "modellane.promoted_by"
#: The key (or person) that registered the version, where the registering client set it.
TAG_REGISTERED_BY = "modellane.registered_by"


class ApprovalSettings(BaseModel):
    """The ``approval:`` block: rules for models with ``require_approval``."""

    four_eyes: bool = Field(
        default=False,
        description="The key that registered a version (tag modellane.registered_by) or "
        "moved alias champion to it through the admin API (modellane.promoted_by) may not "
        "approve it.",
    )


@dataclass(frozen=True)
class Approval:
    by: str
    at: str
    note: str


def approval_of(tags: dict[str, str]) -> Approval | None:
    """The version's approval, if it has one."""
    by = tags.get(TAG_APPROVED_BY)
    if not by:
        return None
    return Approval(by, tags.get(TAG_APPROVED_AT, ""), tags.get(TAG_APPROVAL_NOTE, ""))


def cleared(version: RegisteredVersion) -> bool:
    """May serve as champion: approved, or it served as champion before."""
    return approval_of(version.tags) is not None or constants.TAG_SWITCHED_AT in version.tags


def last_champion(versions: list[RegisteredVersion]) -> RegisteredVersion | None:
    """The version that most recently became champion (``modellane.switched_at``, an ISO
    time, so the greatest string is the latest): who serves after a restart while the
    champion alias names a blocked version."""
    served = [v for v in versions if v.tags.get(constants.TAG_SWITCHED_AT)]
    return max(served, key=lambda v: v.tags[constants.TAG_SWITCHED_AT]) if served else None


def gate(
    versions: list[RegisteredVersion],
    roles: dict[str, Desired],
    serving: Desired | None,
    required: bool,
) -> tuple[dict[str, Desired], RegisteredVersion | None]:
    """The roles to serve, and the version blocked for want of an approval (if any).

    Where the registry's champion is a new version that is not cleared, the champion role
    stays with ``serving`` (the champion serving now; after a restart, the last one), or
    goes to nobody where none ever served.
    """
    wanted = roles.get(constants.ROLE_CHAMPION)
    if not required or wanted is None:
        return roles, None
    if serving is not None and wanted.version == serving.version:
        return roles, None
    found = next((v for v in versions if v.version == wanted.version), None)
    if found is None or cleared(found):
        return roles, None
    if serving is None:
        last = last_champion(versions)
        serving = Desired(last.version, wanted.source) if last is not None else None
    gated = dict(roles)
    if serving is None:
        del gated[constants.ROLE_CHAMPION]
    else:
        gated[constants.ROLE_CHAMPION] = serving
    return gated, found


def blocked_reason(wanted: Desired, serving: Desired | None) -> str:
    keeps = f"v{serving.version} keeps serving" if serving else "no version serves"
    return (
        f"took the champion role ({wanted.source}) without an approval: it gets no traffic "
        f"and {keeps} until it is approved (modellane approve, or POST "
        f".../versions/{wanted.version}/approve)"
    )


def approver_refusal(tags: dict[str, str], approver: str, four_eyes: bool) -> str | None:
    """Why ``approver`` may not approve a version with ``tags``; None where it may."""
    if not four_eyes:
        return None
    for tag, did in ((TAG_REGISTERED_BY, "registered"), (TAG_PROMOTED_BY, "promoted")):
        if tags.get(tag) == approver:
            return f"four-eyes: key {approver!r} {did} this version, so another key must approve"
    return None


__all__ = [
    "TAG_APPROVAL_NOTE",
    "TAG_APPROVED_AT",
    "TAG_APPROVED_BY",
    "TAG_BLOCKED",
    "TAG_PROMOTED_BY",
    "TAG_REGISTERED_BY",
    "Approval",
    "ApprovalSettings",
    "approval_of",
    "approver_refusal",
    "blocked_reason",
    "cleared",
    "gate",
    "last_champion",
]
