"""Releases: uploading artifacts and creating deployments for a site (seeds phase 5).

- `upload`: the artifact is read and checked locally first (`read_artifact_file`); when the server
  already has an artifact with that name for an overlapping device type and the same size, the
  upload is a no-op. The upload itself is never retried blindly (it is not idempotent): after a
  failure the server is asked again whether the artifact arrived before trying once more.
- `deploy`: a deployment listing the site's devices by their Mender device IDs (from the ledger).
  The server refuses an identical active deployment with 409; that is reported as "exists".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from gapferry.common.artifact.reader import read_artifact_file
from gapferry.common.errors import EnvironmentFailure, InvalidData, UsageProblem
from gapferry.connected.mender.management import ArtifactRecord
from gapferry.connected.session import Session
from gapferry.connected.site import Site, SiteDevice

__all__ = ["DeployResult", "UploadResult", "deploy", "upload"]


class UploadResult(msgspec.Struct, kw_only=True):
    artifact_name: str
    device_types: list[str]
    size: int
    sha256: str
    action: str  # uploaded | already-there
    artifact_id: str | None = None
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class DeployResult(msgspec.Struct, kw_only=True):
    deployment: str
    artifact_name: str
    devices: list[str]
    action: str  # created | exists
    deployment_id: str | None = None
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def _existing(
    session: Session, name: str, device_types: tuple[str, ...], size: int
) -> ArtifactRecord | None:
    for rec in session.management.list_artifacts(name=name):
        if set(rec.device_types_compatible) & set(device_types):
            if rec.size is not None and rec.size != size:
                raise InvalidData(
                    f"the server has a different artifact named {name!r} for "
                    f"{sorted(set(rec.device_types_compatible) & set(device_types))} "
                    f"({rec.size} bytes, this one has {size})",
                    remedy="give the new build a new artifact name (mender-artifact -n)",
                    code="artifact-name-taken",
                )
            return rec
    return None


def upload(
    session: Session, path: Path, *, description: str = "", verify_key: bytes | None = None
) -> UploadResult:
    """Upload `path` unless the same artifact is already on the server."""
    info = read_artifact_file(path, verify_key=verify_key)

    def result(action: str, artifact_id: str | None) -> UploadResult:
        return UploadResult(
            artifact_name=info.name,
            device_types=list(info.device_types),
            size=info.size,
            sha256=info.sha256,
            action=action,
            artifact_id=artifact_id,
        )

    rec = _existing(session, info.name, info.device_types, info.size)
    if rec is not None:
        return result("already-there", rec.id)
    try:
        new_id = session.management.upload_artifact(path, description=description)
    except EnvironmentFailure:
        # The upload may have landed before the connection broke: look before trying again.
        rec = _existing(session, info.name, info.device_types, info.size)
        if rec is not None:
            return result("uploaded", rec.id)
        new_id = session.management.upload_artifact(path, description=description)
    if new_id is None:  # 409: arrived meanwhile
        rec = _existing(session, info.name, info.device_types, info.size)
        return result("already-there", rec.id if rec else None)
    return result("uploaded", new_id)


def deploy(
    session: Session,
    site: Site,
    devices: list[SiteDevice],
    *,
    artifact_name: str,
    name: str | None = None,
) -> DeployResult:
    """Create a deployment of `artifact_name` to `devices` (their Mender IDs from the ledger).

    Raises:
        UsageProblem: a device has no Mender ID yet (run `gapferry device preauth` first).
    """
    ids = []
    missing = []
    for dev in devices:
        row = session.ledger.device(site.name, dev.name)
        if row is None or not row.device_id:
            missing.append(dev.name)
        else:
            ids.append(row.device_id)
    if missing:
        raise UsageProblem(
            f"no Mender device ID yet for {', '.join(missing)}",
            remedy="run `gapferry device preauth` (and `auth`) for the site first",
            code="device-not-registered",
        )
    dep_name = name or f"{site.name}-{artifact_name}"
    dep_id = session.management.create_deployment(
        name=dep_name, artifact_name=artifact_name, devices=ids
    )
    return DeployResult(
        deployment=dep_name,
        artifact_name=artifact_name,
        devices=[d.name for d in devices],
        action="created" if dep_id else "exists",
        deployment_id=dep_id,
    )
