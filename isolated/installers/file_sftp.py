"""Install by placing files over SFTP, for devices without a Mender client (issue 6 step 3,
"file placement ... or over SFTP"; ADR 0054).

The ``file-sftp`` method: ``single-file`` and ``directory`` payloads are placed with the update
modules' semantics (`../shared/mender/artifact-and-client.md` 2.1) under ``root`` on the device,
through the system ``sftp`` in batch mode (`gapferry.isolated.installers.sftp`). Flow:

1. the laptop-side checks, nothing touches the device: artifact_depends against the manifest's
   current artifact name; stage the payload while re-reading the artifact (checksums and the
   site's signature checked again); `plan_placement`; for ``directory``, update.tar is unpacked
   into the private work folder with `apply_placement` (links, devices, escaping names refused);
2. read-only checks on the device: ``root`` and every existing folder of ``dest_dir`` must be
   real folders (``cd`` + ``pwd`` resolves links: a different answer means a symbolic link);
   a single-file target must not be a folder; a directory target must not be a file;
3. upload to a temporary sibling with a random name (single-file: ``put`` + ``chmod``; directory:
   the whole tree, folder modes last), rename what was there to a backup sibling, rename the new
   one into place (``posix-rename`` for a file). Any failure removes the temporaries and puts
   the backup back;
4. ``check_command`` (optional) runs on the laptop, like the ``file`` method, with
   ``GAPFERRY_ROOT`` (the device's root), ``GAPFERRY_HOST``, ``GAPFERRY_PORT``, ``GAPFERRY_USER``
   set; non-zero means failure and the backup is restored. On success the backup is removed.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gapferry.common.artifact.compat import check_compatible
from gapferry.common.artifact.extract import Placement, Stager, apply_placement, plan_placement
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.isolated.installers.base import InstallJob
from gapferry.isolated.installers.bounded import run_bounded

# The file method's second, checked read of the artifact (shared on purpose; see ADR 0054).
from gapferry.isolated.installers.file_placement import _stage as stage_artifact
from gapferry.isolated.installers.sftp import SftpFailure, SftpSession, check_name, quote
from gapferry.isolated.installers.ssh import SshFailure
from gapferry.isolated.report import DeviceReport

__all__ = ["SftpFileInstaller"]

_CHECK_TIMEOUT = 600
#: Seconds for one small batch (checks, renames).
_SHORT = 120
#: Entries removed at most when dropping a directory backup (the old tree) over SFTP.
_RMTREE_MAX = 100_000
_CWD_PREFIX = "Remote working directory: "


class _Refused(Exception):
    """A device-side check failed before anything was changed."""

    def __init__(self, message: str, code: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        #: Nothing is wrong with the update: the technician can fix the device and run again.
        self.retry = retry


@dataclass(kw_only=True)
class _Tree:
    """The unpacked update.tar: folders (relative, parents first) and files with their modes."""

    top_mode: int = 0o755
    dirs: list[tuple[str, int]] = field(default_factory=list)
    files: list[tuple[str, Path, int]] = field(default_factory=list)


def _join(*parts: str) -> str:
    """The parts as one absolute path; every part is relative to the one before (a leading
    ``/`` does not restart the path: ``_join("/srv", "/etc")`` is ``/srv/etc``)."""
    return posixpath.normpath("/" + "/".join(p.strip("/") for p in parts if p.strip("/")))


class SftpFileInstaller:
    """The ``file-sftp`` method."""

    method = "file-sftp"

    def install(self, job: InstallJob) -> DeviceReport:
        stager = Stager(job.workdir / "stage")
        session = SftpSession(job.target, name=job.device.name, workdir=job.workdir)
        try:
            return _Run(job, session).run(stager)
        finally:
            stager.discard()
            session.close()


class _Run:
    def __init__(self, job: InstallJob, session: SftpSession) -> None:
        self.job = job
        self.s = session
        self.log = job.log
        self.timeout = job.target.command_timeout
        self.root = posixpath.normpath(job.target.root)
        #: True once the first change on the device was made (a temporary upload).
        self.started = False
        #: True once the target itself was touched (the first rename).
        self.changed = False
        #: What an interrupted upload may have left next to the target (said in the reason).
        self.left_behind = ""
        #: What a failed placement left: said in the failure reason.
        self.restored = "the previous content was not touched"

    def finish(self, outcome: str, reason: str | None = None, **kw: object) -> DeviceReport:
        d = self.job.device
        return self.log.finish(
            mender_device_id=d.mender_device_id,
            deployment_id=d.deployment.id,
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            **kw,  # type: ignore[arg-type]
        )

    def run(self, stager: Stager) -> DeviceReport:
        job = self.job
        # 1. Laptop side: nothing touches the device.
        try:
            check_compatible(
                job.artifact,
                device_type=job.device.device_type,
                artifact_name=job.device.current_artifact_name,
                provides={},
            )
            stage_artifact(job, stager)
            placement = plan_placement(job.artifact, stager, limits=job.limits)
            tree = self.unpack(placement) if placement.kind == "directory" else None
            for p in (self.root, placement.dest_dir, placement.filename or ""):
                check_name(p)
        except InvalidData as e:
            return self.finish(
                "failure", f"refused before placing anything: {e.message}", code=e.code
            )
        except ValueError as e:
            return self.finish(
                "failure", f"refused before placing anything: {e}", code="unsafe-path"
            )
        dest = _join(self.root, placement.dest_dir)
        self.log.log(
            "info",
            f"{placement.kind} payload for {placement.dest_dir}"
            + (
                f"/{placement.filename}"
                if placement.filename
                else f" ({placement.entries} entries)"
            )
            + f" under {self.root} on {job.target.host} (sftp)",
        )
        try:
            # 2. Read-only checks on the device.
            try:
                exists = self.inspect(placement, dest)
            except _Refused as e:
                return self.finish(
                    "skipped" if e.retry else "failure",
                    f"refused before placing anything: {e.message}",
                    retry=e.retry,
                    code=e.code,
                )
            # 3. Change the device.
            job.mark_started()
            self.log.step("installing")
            token = secrets.token_hex(6)
            if placement.kind == "single-file":
                return self.single(placement, dest, exists, token)
            assert tree is not None  # noqa: S101 - set above for directory payloads
            return self.directory(tree, dest, exists, token)
        except SshFailure as e:
            if not self.changed:
                # Only checks, or an upload to a temporary name: the target was not touched.
                left = f" {self.left_behind}" if self.left_behind else ""
                return self.finish(
                    "skipped",
                    f"{e.message}; nothing was replaced on the device.{left} {e.remedy}",
                    retry=True,
                    code=e.code,
                )
            return self.finish(
                "failure",
                f"{e.message} while replacing; {self.restored}. {e.remedy}",
                code=e.code,
            )

    # --- laptop side ----------------------------------------------------------------------

    def unpack(self, placement: Placement) -> _Tree:
        """Unpack update.tar into the work folder with the local placement's checks.

        Raises:
            InvalidData: a hostile update.tar (links, devices, escaping names, limits).
        """
        scratch = self.job.workdir / "tree"
        scratch.mkdir(mode=0o700)
        try:
            apply_placement(placement, scratch, limits=self.job.limits)
        except EnvironmentFailure as e:
            raise InvalidData(
                f"update.tar could not be unpacked on the laptop: {e.message}",
                remedy="check free space in the laptop's temporary folder",
                code="unpack-failed",
            ) from e
        top = scratch / placement.dest_dir.lstrip("/")
        tree = _Tree(top_mode=top.stat().st_mode & 0o777)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            base = Path(dirpath)
            for d in dirnames:
                rel = (base / d).relative_to(top).as_posix()
                check_name(rel)
                tree.dirs.append((rel, (base / d).stat().st_mode & 0o777))
            for f in sorted(filenames):
                rel = (base / f).relative_to(top).as_posix()
                check_name(rel)
                tree.files.append((rel, base / f, (base / f).stat().st_mode & 0o777))
        return tree

    # --- device side ----------------------------------------------------------------------

    def inspect(self, placement: Placement, dest: str) -> bool:
        """Check root and the folders of dest_dir; True when the target exists.

        Raises:
            _Refused: a link, a file where a folder must be, a folder where a file must be, no root.
            SshFailure: the connection failed (host key, auth, network).
        """
        b = self.s.run([f"cd {quote(self.root)}", "pwd"], timeout=_SHORT)
        if b.rc != 0 or _pwds(b.stdout) != [self.root]:
            raise _Refused(
                f"the root folder {self.root} does not exist on the device or is a symbolic link"
                f" ({_last(b.stderr) or 'it resolves to ' + ' '.join(_pwds(b.stdout))})",
                "bad-root",
                retry=True,
            )
        rel = [p for p in placement.dest_dir.split("/") if p]
        levels = [_join(self.root, *rel[: i + 1]) for i in range(len(rel))]
        lines = [line for lv in levels for line in (f"cd {quote(lv)}", "pwd")]
        b = self.s.run(lines, timeout=_SHORT)
        seen = _pwds(b.stdout)
        for want, got in zip(levels, seen, strict=False):
            if want != got:
                raise _Refused(
                    f"{want} on the device is a symbolic link (to {got}); gapferry does not"
                    " follow links",
                    "unsafe-path",
                )
        if b.rc != 0 and "No such file" not in b.stderr:
            failed = levels[len(seen)]
            raise _Refused(
                f"{failed} on the device is not a folder or cannot be entered ({_last(b.stderr)})",
                "unsafe-path",
            )
        if placement.kind == "directory":
            return len(seen) == len(levels)
        if len(seen) != len(levels):
            return False
        target = _join(dest, placement.filename or "")
        b = self.s.run([f"ls -l {quote(target)}"], timeout=_SHORT)
        if b.rc != 0:
            if "not found" in b.stderr:
                return False
            raise _Refused(
                f"cannot look at {target} on the device: {_last(b.stderr)}", "sftp-failed"
            )
        entries = [ln for ln in b.stdout.splitlines() if not ln.startswith("sftp> ")]
        if len(entries) != 1 or not entries[0].startswith("-") or not entries[0].endswith(target):
            raise _Refused(
                f"{target} exists on the device and is not a regular file", "unsafe-path"
            )
        return True

    def replacing(self, target: str, backup: str, tmp: str, *, exists: bool) -> None:
        """The first change of the target: rename it to `backup` (when it exists). From here on
        a lost connection leaves the device in a state only a look can tell (`restored` says
        what to look for).

        Raises:
            SftpFailure: the rename failed (the target was not touched).
            SshFailure: the connection was lost.
        """
        self.changed = True
        self.restored = (
            f"the device's state is not known: if {target} is missing, the previous content is"
            f" {backup} (rename it back by hand); remove {tmp} if it is there"
            if exists
            else f"the device's state is not known: {tmp} or {target} may be there"
        )
        if not exists:
            return
        try:
            self.s.must(
                [f"rename {quote(target)} {quote(backup)}"],
                timeout=_SHORT,
                what=f"keeping {target} as a backup",
            )
        except SftpFailure:
            self.restored = "the previous content was not touched"
            raise

    def put_back(self, backup: str, target: str) -> None:
        """Rename the backup back into place after a failed replace (`restored` says how it
        went)."""
        try:
            ok = self.s.run([f"rename {quote(backup)} {quote(target)}"], timeout=_SHORT).rc == 0
        except SshFailure:
            ok = False
        self.restored = (
            "the previous content was restored"
            if ok
            else (
                f"RESTORE FAILED: the previous content is kept as {backup} on the device;"
                f" rename it to {target} by hand"
            )
        )

    def mkdirs(self, folder: str) -> list[str]:
        """``-mkdir`` for each level of `folder` below root (errors ignored: mkdir -p)."""
        rel = posixpath.relpath(folder, self.root).split("/")
        if rel == ["."]:
            return []
        return [f"-mkdir {quote(_join(self.root, *rel[: i + 1]))}" for i in range(len(rel))]

    def single(self, placement: Placement, dest: str, exists: bool, token: str) -> DeviceReport:
        name = placement.filename or ""
        target = _join(dest, name)
        tmp = _join(dest, f".{name}.gapferry-new-{token}")
        backup = _join(dest, f".{name}.gapferry-backup-{token}")
        mode = f"{placement.mode or 0o600:o}"
        self.started = True
        size = placement.source.stat().st_size
        self.log.progress(0, size)
        try:
            self.upload(
                [
                    *self.mkdirs(dest),
                    f"put {quote(str(placement.source))} {quote(tmp)}",
                    f"chmod {mode} {quote(tmp)}",
                ],
                what=f"uploading {tmp}",
                cleanup=[f"-rm {quote(tmp)}"],
                temporary=tmp,
            )
            self.log.progress(size, size)
            self.replacing(target, backup, tmp, exists=exists)
            try:
                self.s.must(
                    [f"rename {quote(tmp)} {quote(target)}"],
                    timeout=_SHORT,
                    what=f"replacing {target}",
                )
            except (SftpFailure, SshFailure) as e:
                if exists:
                    self.put_back(backup, target)
                elif isinstance(e, SftpFailure):
                    self.restored = "nothing was placed"
                raise
        except SftpFailure as e:
            self.s.run([f"-rm {quote(tmp)}"], timeout=_SHORT)
            return self.finish(
                "failure",
                f"placing the file failed, {self.restored}: {e.message}",
                code="install-failed",
            )
        undo = [f"rename {quote(backup)} {quote(target)}"] if exists else [f"rm {quote(target)}"]

        def drop() -> None:
            if exists:
                self.s.must([f"rm {quote(backup)}"], timeout=_SHORT, what="removing the backup")

        return self.check_and_commit(undo, drop, lambda: None)

    def directory(self, tree: _Tree, dest: str, exists: bool, token: str) -> DeviceReport:
        parent, name = posixpath.split(dest)
        tmp = _join(parent, f".{name}.gapferry-new-{token}")
        backup = _join(parent, f".{name}.gapferry-backup-{token}")
        failed = _join(parent, f".{name}.gapferry-failed-{token}")
        self.started = True
        lines = [*self.mkdirs(parent), f"mkdir {quote(tmp)}"]
        lines += [f"mkdir {quote(_join(tmp, d))}" for d, _ in tree.dirs]
        for rel, local, mode in tree.files:
            lines += [
                f"put {quote(str(local))} {quote(_join(tmp, rel))}",
                f"chmod {mode:o} {quote(_join(tmp, rel))}",
            ]
        lines += [f"chmod {m:o} {quote(_join(tmp, d))}" for d, m in reversed(tree.dirs)]
        lines.append(f"chmod {tree.top_mode:o} {quote(tmp)}")
        try:
            size = sum(local.stat().st_size for _, local, _ in tree.files)
            self.log.progress(0, size)
            self.upload(
                lines,
                what=f"uploading the tree to {tmp}",
                cleanup=self.remove_tree(tree, tmp),
                temporary=tmp,
            )
            self.log.progress(size, size)
            self.replacing(dest, backup, tmp, exists=exists)
            try:
                self.s.must(
                    [f"rename {quote(tmp)} {quote(dest)}"], timeout=_SHORT, what=f"replacing {dest}"
                )
            except (SftpFailure, SshFailure) as e:
                if exists:
                    self.put_back(backup, dest)
                elif isinstance(e, SftpFailure):
                    self.restored = "nothing was placed"
                raise
        except SftpFailure as e:
            self.s.run(self.remove_tree(tree, tmp), timeout=self.timeout)
            return self.finish(
                "failure",
                f"placing the files failed, {self.restored}: {e.message}",
                code="install-failed",
            )
        undo = [f"rename {quote(dest)} {quote(failed)}"]
        if exists:
            undo.append(f"rename {quote(backup)} {quote(dest)}")

        def after_undo() -> None:
            self.s.run(self.remove_tree(tree, failed), timeout=self.timeout)

        def drop() -> None:
            if exists:
                self.rmtree(backup)

        return self.check_and_commit(undo, drop, after_undo)

    def upload(self, lines: list[str], *, what: str, cleanup: list[str], temporary: str) -> None:
        """Run the upload batch `lines` (it writes only to the temporary name `temporary`). When
        the connection is lost, try once to remove what was uploaded, then re-raise.

        Raises:
            SftpFailure: a command of the batch failed.
            SshFailure: the connection was lost (`left_behind` says what may remain).
        """
        try:
            self.s.must(lines, timeout=self.timeout, what=what)
        except SshFailure:
            try:
                self.s.run(cleanup, timeout=self.timeout)
            except SshFailure:
                self.left_behind = (
                    f"A partial upload may remain on the device as {temporary}; remove it."
                )
            raise

    def remove_tree(self, tree: _Tree, top: str) -> list[str]:
        """Batch lines that remove a tree this run uploaded (its content is known)."""
        lines = [f"-chmod 700 {quote(top)}"]
        lines += [f"-chmod 700 {quote(_join(top, d))}" for d, _ in tree.dirs]
        lines += [f"-rm {quote(_join(top, f))}" for f, _, _ in tree.files]
        lines += [f"-rmdir {quote(_join(top, d))}" for d, _ in reversed(tree.dirs)]
        lines.append(f"-rmdir {quote(top)}")
        return lines

    def rmtree(self, top: str) -> None:
        """Remove a folder over SFTP without following links (``ls -la`` lists by lstat).

        Raises:
            SftpFailure: a listing could not be parsed (odd names) or a removal failed.
        """
        lines: list[str] = []
        budget = [_RMTREE_MAX]

        def walk(folder: str) -> None:
            self.s.must([f"chmod 700 {quote(folder)}"], timeout=_SHORT, what=f"opening {folder}")
            b = self.s.must([f"ls -la {quote(folder)}"], timeout=_SHORT, what=f"listing {folder}")
            for ln in b.stdout.splitlines():
                if ln.startswith("sftp> "):
                    continue
                parts = ln.split(maxsplit=8)
                path = parts[8] if len(parts) == 9 else ""
                if not path.startswith(folder + "/") or "/" in path[len(folder) + 1 :]:
                    raise SftpFailure(
                        f"cannot read the listing of {folder} (line {ln[:200]!r})",
                        remedy="remove it by hand",
                    )
                if path.endswith(("/.", "/..")):
                    continue
                budget[0] -= 1
                if budget[0] < 0:
                    raise SftpFailure(
                        f"{top} has more than {_RMTREE_MAX} entries", remedy="remove it by hand"
                    )
                if parts[0].startswith("d"):
                    walk(path)
                else:
                    lines.append(f"rm {quote(path)}")
            lines.append(f"rmdir {quote(folder)}")

        walk(top)
        # Every folder was opened (chmod 700) while listing; its children come before its rmdir.
        self.s.must(lines, timeout=self.timeout, what=f"removing {top}")

    def check_and_commit(
        self, undo: list[str], drop: Callable[[], None], after_undo: Callable[[], None]
    ) -> DeviceReport:
        """Run the check command; on failure `undo` (a batch) then `after_undo`, else `drop`."""
        job = self.job
        check = job.target.check_command
        if check:
            t = job.target
            env = dict(
                os.environ,
                GAPFERRY_ROOT=self.root,
                GAPFERRY_HOST=t.host or "",
                GAPFERRY_PORT=str(t.port or ""),
                GAPFERRY_USER=t.user or "",
            )
            try:
                p = run_bounded(["/bin/sh", "-c", check], timeout=_CHECK_TIMEOUT, env=env)
                rc, out = (
                    p.returncode,
                    (p.stdout + p.stderr)[-64 * 1024 :].decode("utf-8", "replace"),
                )
            except subprocess.TimeoutExpired:
                rc, out = -1, f"timed out after {_CHECK_TIMEOUT} s"
            self.log.log("info", f"$ {shlex.quote(check)} -> exit {rc}")
            if out.strip():
                self.log.log("debug", out)
            if rc != 0:
                try:
                    self.s.must(undo, timeout=_SHORT, what="restoring the previous content")
                    note = "the previous content was restored"
                    try:
                        after_undo()
                    except (SftpFailure, SshFailure) as e:
                        self.log.log(
                            "warning", f"the failed files could not be removed: {e.message}"
                        )
                except (SftpFailure, SshFailure) as e:
                    note = f"RESTORE FAILED: {e.message}; the previous content is next to it with the suffix .gapferry-backup-*"
                return self.finish(
                    "failure", f"the check command failed (exit {rc}); {note}", code="check-failed"
                )
        try:
            drop()
        except (SftpFailure, SshFailure) as e:
            self.log.log("warning", f"the backup could not be removed: {e.message}")
        return self.finish("success", artifact_name_after=job.artifact.name)


def _pwds(stdout: str) -> list[str]:
    return [ln[len(_CWD_PREFIX) :] for ln in stdout.splitlines() if ln.startswith(_CWD_PREFIX)]


def _last(stderr: str) -> str:
    return stderr.splitlines()[-1] if stderr else ""
