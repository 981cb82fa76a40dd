"""Install by placing files, for devices without a Mender client (issue 6 step 3, "file").

``path`` in the devices file is the device's root file system as the laptop sees it (a mounted
disk, a share). ``single-file`` and ``directory`` payloads are placed with the update modules'
semantics by `gapferry.common.artifact.extract` (`../shared/mender/artifact-and-client.md` 2.1,
ADR 0011): atomic replacement, a backup of what was there, restored on failure. Flow:

1. stage the payload files in the device's private work folder while re-reading the artifact
   from the bundle (its manifest checksums, and the site's signature when configured, are checked
   again on this pass: the medium is not trusted to return the same bytes twice);
2. `plan_placement` (checks everything, touches nothing): a payload type other than single-file or
   directory, an unsafe path or an augmented (unsigned) file is a ``failure`` before any change;
3. `apply_placement` (restores itself if it fails part-way), then ``check_command`` (optional, run
   on the laptop with ``GAPFERRY_ROOT`` set to ``path``; non-zero means failure): on failure the
   backup is restored, on success it is dropped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from gapferry.common.artifact.extract import (
    Stager,
    apply_placement,
    commit,
    plan_placement,
    restore,
)
from gapferry.common.artifact.reader import read_artifact
from gapferry.common.digest import sha256_stream
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.isolated.installers.base import InstallJob
from gapferry.isolated.installers.bounded import run_bounded
from gapferry.isolated.report import DeviceReport

__all__ = ["FileInstaller"]

_CHECK_TIMEOUT = 600


class FileInstaller:
    """The ``file`` method."""

    method = "file"

    def install(self, job: InstallJob) -> DeviceReport:
        d = job.device
        log = job.log

        def finish(outcome: str, reason: str | None = None, **kw: object) -> DeviceReport:
            return log.finish(
                mender_device_id=d.mender_device_id,
                deployment_id=d.deployment.id,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                **kw,  # type: ignore[arg-type]
            )

        root = Path(job.target.path or "")
        if not root.is_dir() or root.is_symlink():
            return finish(
                "skipped",
                f"the device path {root} is not a mounted folder; mount the device, then run the"
                " same bundle again",
                retry=True,
                code="not-mounted",
            )
        stager = Stager(job.workdir / "stage")
        try:
            try:
                _stage(job, stager)
                placement = plan_placement(job.artifact, stager, limits=job.limits)
            except InvalidData as e:
                return finish(
                    "failure", f"refused before placing anything: {e.message}", code=e.code
                )
            log.log(
                "info",
                f"{placement.kind} payload for {placement.dest_dir}"
                + (
                    f"/{placement.filename}"
                    if placement.filename
                    else f" ({placement.entries} entries)"
                )
                + f" under {root}",
            )
            job.mark_started()
            log.step("installing")
            try:
                backup = apply_placement(placement, root, limits=job.limits)
            except (InvalidData, EnvironmentFailure) as e:
                return finish(
                    "failure",
                    f"placing the files failed, the previous content was restored: {e.message}",
                    code="install-failed",
                )
            check = job.target.check_command
            if check:
                env = dict(os.environ, GAPFERRY_ROOT=str(root))
                try:
                    p = run_bounded(["/bin/sh", "-c", check], timeout=_CHECK_TIMEOUT, env=env)
                    rc, out = p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
                except subprocess.TimeoutExpired:
                    rc, out = -1, f"timed out after {_CHECK_TIMEOUT} s"
                log.log("info", f"$ {shlex.quote(check)} -> exit {rc}")
                if out.strip():
                    log.log("debug", out)
                if rc != 0:
                    try:
                        restore(backup)
                        note = "the previous content was restored"
                    except EnvironmentFailure as e:
                        note = f"RESTORE FAILED: {e.message}; {e.remedy}"
                    return finish(
                        "failure",
                        f"the check command failed (exit {rc}); {note}",
                        code="check-failed",
                    )
            try:
                commit(backup)
            except EnvironmentFailure as e:
                log.log("warning", f"the backup could not be removed: {e.message}")
            return finish("success", artifact_name_after=job.artifact.name)
        finally:
            stager.discard()


def _stage(job: InstallJob, stager: Stager) -> None:
    """Re-read the artifact from the bundle into `stager`, checking it again on the way.

    Raises:
        InvalidData: any artifact error, or the bytes differ from the first read.
    """
    with job.open_artifact() as src:
        again = read_artifact(
            src, verify_key=job.verify_key, limits=job.limits, payload_sink=stager.sink
        )
        sha256_stream(src)  # to the end, where the stream re-checks its sha256
    if again.manifest_sha256 != job.artifact.manifest_sha256:
        raise InvalidData(
            "the artifact read differently the second time",
            remedy="the medium is unreliable or was tampered with; use another copy",
            code="digest-mismatch",
        )
