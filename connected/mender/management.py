"""The Mender management API, with the operator's token (seeds phases 2, 5 and 7).

Paths and answers follow shared/mender/server-behaviour.md sections 2 (deviceauth v2), 4
(deployments management) and 5 (inventory). Only what gapferry needs is here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.connected.mender.http import MenderHttp, error_for

__all__ = [
    "ArtifactRecord",
    "AuthSet",
    "DeploymentDevice",
    "DeviceRecord",
    "ManagementApi",
    "management_token_from_env",
]

DEVAUTH = "/api/management/v2/devauth"
DEPLOY = "/api/management/v1/deployments"


class AuthSet(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    pubkey: str = ""
    status: str = ""
    identity_data: dict[str, Any] = {}
    ts: str | None = None


class DeviceRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    identity_data: dict[str, Any] = {}
    status: str = ""
    decommissioning: bool = False
    auth_sets: list[AuthSet] | None = None


class ArtifactRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    device_types_compatible: list[str] = []
    size: int | None = None
    signed: bool = False


class DeploymentDevice(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: str


def management_token_from_env() -> str:
    """``MENDER_API_TOKEN`` (a personal access token or a management JWT).

    Raises:
        UsageProblem: not set.
    """
    token = os.environ.get("MENDER_API_TOKEN", "").strip()
    if not token:
        raise UsageProblem(
            "MENDER_API_TOKEN is not set",
            remedy="create a personal access token in the Mender UI and export MENDER_API_TOKEN",
            code="no-api-token",
        )
    return token


def _decode(resp_content: bytes, typ: Any, what: str) -> Any:
    try:
        return msgspec.json.decode(resp_content, type=typ)
    except msgspec.DecodeError as e:
        raise InvalidData(
            f"{what}: unexpected answer from the server: {e}",
            remedy="check the server version (Mender Server 4.x expected)",
            code="bad-server-answer",
        ) from e


class ManagementApi:
    """Management API calls with a PAT or management JWT."""

    def __init__(self, http: MenderHttp, *, token: str) -> None:
        self.http = http
        self._auth = {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return f"ManagementApi(server={self.http.server_url!r})"

    def _req(self, method: str, path: str, *, idempotent: bool, what: str, **kw: Any) -> Any:
        headers = dict(self._auth)
        headers.update(kw.pop("headers", {}))
        return self.http.request(
            method, path, idempotent=idempotent, headers=headers, what=what, **kw
        )

    # --- deviceauth (phase 2 and 7) -------------------------------------------------------
    def preauthorize(self, *, identity: dict[str, str], pubkey_pem: str) -> str | None:
        """Preauthorize (identity, key) with ``force: true`` (an upsert, safe to repeat).

        Returns the device ID from ``Location`` when the server gives one.
        """
        what = "preauthorize device"
        resp = self._req(
            "POST",
            f"{DEVAUTH}/devices",
            idempotent=True,
            what=what,
            json_body={"identity_data": identity, "pubkey": pubkey_pem, "force": True},
        )
        if resp.status_code == 409:
            rec = _decode(resp.content, DeviceRecord, what)
            return str(rec.id)
        if resp.status_code != 201:
            raise error_for(resp, what=what)
        loc = resp.headers.get("Location", "")
        return loc.rstrip("/").rsplit("/", 1)[-1] or None

    def get_device(self, device_id: str) -> DeviceRecord | None:
        what = f"read device {device_id}"
        resp = self._req("GET", f"{DEVAUTH}/devices/{device_id}", idempotent=True, what=what)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        rec: DeviceRecord = _decode(resp.content, DeviceRecord, what)
        return rec

    def find_device(self, identity: dict[str, str]) -> DeviceRecord | None:
        """Find a device by identity, paging through ``GET /devices`` (the search endpoint
        cannot filter by identity, section 2)."""
        page = 1
        while True:
            what = "list devices"
            resp = self._req(
                "GET", f"{DEVAUTH}/devices?page={page}&per_page=500", idempotent=True, what=what
            )
            if resp.status_code != 200:
                raise error_for(resp, what=what)
            recs: list[DeviceRecord] = _decode(resp.content, list[DeviceRecord] | None, what) or []
            for rec in recs:
                if {k: str(v) for k, v in rec.identity_data.items()} == identity:
                    return rec
            if len(recs) < 500:
                return None
            page += 1

    def delete_auth_set(self, device_id: str, auth_id: str) -> bool:
        """Remove one auth set (phase 7). False if it was already gone."""
        what = f"remove auth set {auth_id} of device {device_id}"
        resp = self._req(
            "DELETE", f"{DEVAUTH}/devices/{device_id}/auth/{auth_id}", idempotent=True, what=what
        )
        if resp.status_code == 404:
            return False
        if resp.status_code != 204:
            raise error_for(resp, what=what)
        return True

    def decommission(self, device_id: str) -> bool:
        """Decommission the device (phase 7). False if it was already gone."""
        what = f"decommission device {device_id}"
        resp = self._req("DELETE", f"{DEVAUTH}/devices/{device_id}", idempotent=True, what=what)
        if resp.status_code == 404:
            return False
        if resp.status_code != 204:
            raise error_for(resp, what=what)
        return True

    # --- artifacts (phase 5) ----------------------------------------------------------------
    def list_artifacts(self, *, name: str | None = None) -> list[ArtifactRecord]:
        what = "list artifacts"
        query = "?" + urlencode({"name": name}) if name else ""
        resp = self._req("GET", f"{DEPLOY}/artifacts{query}", idempotent=True, what=what)
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        recs: list[ArtifactRecord] = _decode(resp.content, list[ArtifactRecord] | None, what) or []
        if name is not None:
            recs = [r for r in recs if r.name == name]  # the server's filter is a substring match
        return recs

    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        what = f"read artifact {artifact_id}"
        resp = self._req("GET", f"{DEPLOY}/artifacts/{artifact_id}", idempotent=True, what=what)
        if resp.status_code in (400, 404):
            return None
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        rec: ArtifactRecord = _decode(resp.content, ArtifactRecord, what)
        return rec

    def upload_artifact(self, path: Path, *, description: str = "") -> str | None:
        """Upload an artifact file (multipart: size and description before the file, section 4).

        Not retried blindly: the caller checks with `list_artifacts` first and after a failure.
        Returns the new artifact ID, or None when the server already had it (409).
        """
        what = f"upload artifact {path.name}"
        size = path.stat().st_size
        with path.open("rb") as f:
            resp = self._req(
                "POST",
                f"{DEPLOY}/artifacts",
                idempotent=False,
                what=what,
                data={"size": str(size), "description": description},
                files={"artifact": (path.name, f, "application/octet-stream")},
            )
        if resp.status_code == 409:
            return None
        if resp.status_code != 201:
            raise error_for(resp, what=what)
        return str(resp.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]) or None

    # --- deployments (phase 5) --------------------------------------------------------------
    def create_deployment(self, *, name: str, artifact_name: str, devices: list[str]) -> str | None:
        """Create a deployment for listed device IDs. None when an identical one is active (409)."""
        what = f"create deployment {name!r}"
        resp = self._req(
            "POST",
            f"{DEPLOY}/deployments",
            idempotent=False,
            what=what,
            json_body={"name": name, "artifact_name": artifact_name, "devices": devices},
        )
        if resp.status_code == 409:
            return None
        if resp.status_code == 422:
            raise error_for(
                resp,
                what=what,
                remedy=f"the server has no artifact named {artifact_name!r}: upload it first "
                "(`gapferry release upload FILE`) or check the name",
            )
        if resp.status_code != 201:
            raise error_for(resp, what=what)
        return str(resp.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]) or None

    def deployment_devices(self, deployment_id: str) -> list[DeploymentDevice]:
        """Per-device records of a deployment (only devices that have polled)."""
        what = f"read devices of deployment {deployment_id}"
        resp = self._req(
            "GET", f"{DEPLOY}/deployments/{deployment_id}/devices", idempotent=True, what=what
        )
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        recs: list[DeploymentDevice] = (
            _decode(resp.content, list[DeploymentDevice] | None, what) or []
        )
        return recs

    def deployment_status(self, deployment_id: str) -> str | None:
        what = f"read deployment {deployment_id}"
        resp = self._req("GET", f"{DEPLOY}/deployments/{deployment_id}", idempotent=True, what=what)
        if resp.status_code in (400, 404):
            return None
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        body = _decode(resp.content, dict[str, Any], what)
        st = body.get("status")
        return st if isinstance(st, str) else None

    def deployment_name(self, deployment_id: str) -> str | None:
        what = f"read deployment {deployment_id}"
        resp = self._req("GET", f"{DEPLOY}/deployments/{deployment_id}", idempotent=True, what=what)
        if resp.status_code in (400, 404):
            return None
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        body = _decode(resp.content, dict[str, Any], what)
        name = body.get("name")
        return name if isinstance(name, str) and name else None

    def abort_deployment(self, deployment_id: str) -> bool:
        what = f"abort deployment {deployment_id}"
        resp = self._req(
            "PUT",
            f"{DEPLOY}/deployments/{deployment_id}/status",
            idempotent=True,
            what=what,
            json_body={"status": "aborted"},
        )
        if resp.status_code == 422:
            return False
        if resp.status_code != 204:
            raise error_for(resp, what=what)
        return True
