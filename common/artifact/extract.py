"""Place `single-file` and `directory` payloads exactly as mender-client 3.4's update modules do,
under a chosen root folder, with a backup for rollback.

Semantics (`../shared/mender/artifact-and-client.md` 2.1; the module scripts in
``/usr/share/mender/modules/v3``):

- ``single-file``: files ``dest_dir``, ``filename``, ``permissions`` (optional) and the file itself
  (text read as ``$(cat f)``: trailing newlines dropped). ``mkdir -p dest_dir``; the old file is
  kept as a backup; the new file gets mode ``permissions`` (0600 without it: the client writes
  payload files 0600) and replaces the old one atomically.
- ``directory``: files ``update.tar`` and ``dest_dir``. ``dest_dir`` "/" is refused. The current
  ``dest_dir`` is kept as a backup, then replaced entirely by the contents of update.tar (the module
  does ``rm -rf dest_dir`` first: the artifact owns the folder).

Differences, all on the safe side (ADR 0011): paths are resolved under ``root`` without following
any symbolic link (a link in the device tree cannot redirect a write outside ``root``);
update.tar may contain only folders and regular files with relative names (no ``..``, links,
devices or FIFOs); set-user-ID, set-group-ID and sticky bits are dropped and ownership is not
restored; the backup is a sibling (renamed folder or hard link) so that replace and restore are
renames. Use: stage files with `Stager.sink` while `read_artifact` verifies them, then
`plan_placement` (checks everything, touches nothing), `apply_placement` (restores on failure),
then `commit` or `restore`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import msgspec
from gapferry.common.artifact._stream import CHUNK
from gapferry.common.artifact._tar import ByteSource, TarReader
from gapferry.common.artifact.errors import (
    ArtifactStructureError,
    ArtifactTooLarge,
    ArtifactUnsafePath,
    ArtifactUnsigned,
)
from gapferry.common.artifact.reader import ArtifactInfo, PayloadFile
from gapferry.common.digest import Readable
from gapferry.common.errors import EnvironmentFailure
from gapferry.common.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "Backup",
    "Placement",
    "Stager",
    "apply_placement",
    "commit",
    "plan_placement",
    "restore",
]

_BACKUP_SUFFIX = ".gapferry-backup"
_NEW_SUFFIX = ".gapferry-new"
_MAX_TEXT = 4096
_PERMS = re.compile(r"^[0-7]{1,4}$")
_SHELL_UNSAFE = re.compile(r"[\s*?\[\]$`\\'\"]")


class Stager:
    """A payload sink that copies each payload file to ``folder/NNNN/<name>`` (mode 0600).

    Pass ``stager.sink`` as ``read_artifact(..., payload_sink=...)``. Files are only trustworthy
    once `read_artifact` has returned; if it raises, call `discard`.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[int, dict[str, Path]] = {}

    def sink(self, index: int, file: PayloadFile, reader: Readable) -> None:
        d = self.folder / f"{index:04d}"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / file.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with os.fdopen(fd, "wb") as out:
            while n := reader.readinto(view):
                out.write(view[:n])
        self.files.setdefault(index, {})[file.name] = path

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """What `apply_placement` will do: checked, nothing touched yet."""

    kind: str  # "single-file" or "directory"
    #: Absolute destination folder on the device, e.g. ``/opt/app``.
    dest_dir: str
    #: single-file: the file name in dest_dir and its mode.
    filename: str | None = None
    mode: int | None = None
    #: The staged payload file (single-file) or update.tar (directory).
    source: Path
    #: directory: entries and bytes in update.tar (checked by the plan).
    entries: int = 0
    size: int = 0


class Backup(msgspec.Struct, frozen=True, kw_only=True):
    """How to undo an `apply_placement`: paths relative to ``root``."""

    root: Path
    kind: str
    target: str
    #: Sibling holding the previous content, or None when there was none.
    backup: str | None


def _unsafe(msg: str) -> ArtifactUnsafePath:
    return ArtifactUnsafePath(msg)


def _text(staged: dict[str, Path], name: str, ptype: str) -> str:
    path = staged.get(name)
    if path is None:
        raise ArtifactStructureError(
            f"{ptype} payload has no {name!r} file (the {ptype} update module needs it)"
        )
    raw = path.read_bytes()
    if len(raw) > _MAX_TEXT:
        raise ArtifactStructureError(
            f"{ptype} payload file {name!r} is longer than {_MAX_TEXT} bytes"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactStructureError(f"{ptype} payload file {name!r} is not UTF-8 text") from e
    return text.rstrip("\n")  # $(cat f) drops trailing newlines


def _dest_dir(text: str, *, kind: str) -> str:
    if not text.startswith("/") or "\0" in text or "\n" in text:
        raise _unsafe(f"dest_dir {text!r} is not an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"dest_dir {text!r} contains '..'")
    if kind == "directory":
        if not parts:
            raise _unsafe("Error: destination dir is '/', install not supported.")
        if _SHELL_UNSAFE.search(text):
            raise _unsafe(
                f"dest_dir {text!r} contains spaces or shell characters, which the directory"
                " module (unquoted shell variables) would split or expand"
            )
    return "/" + "/".join(parts)


class _Entry(msgspec.Struct, frozen=True, kw_only=True):
    parts: tuple[str, ...]
    kind: str
    size: int
    mode: int


def _entries(f: ByteSource, limits: Limits) -> Iterator[tuple[_Entry, Readable]]:
    """update.tar entries, checked: relative names, folders and regular files only."""
    total = 0
    tar = TarReader(f, what="update.tar", max_members=limits.artifact_members)
    for entry, member in tar:
        name = entry.name
        if name.startswith("/"):
            raise _unsafe(f"update.tar: absolute name {name!r}")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise _unsafe(f"update.tar: name {name!r} escapes the destination ('..')")
        if any("\0" in p or len(p.encode()) > 255 for p in parts):
            raise _unsafe(f"update.tar: bad name {name!r}")
        if len(parts) > limits.payload_path_depth:
            raise ArtifactTooLarge(
                f"update.tar: {name!r} is deeper than {limits.payload_path_depth} folders"
            )
        if entry.kind in ("symlink", "hardlink"):
            raise _unsafe(
                f"update.tar: {name!r} is a link (to {entry.linkname!r}); links are refused"
            )
        if entry.kind not in ("file", "dir"):
            raise _unsafe(
                f"update.tar: {name!r} is a {entry.kind}; only folders and files are allowed"
            )
        if entry.kind == "file" and not parts:
            raise _unsafe(f"update.tar: file entry {name!r} has no name")
        total += entry.size
        if total > limits.artifact_decompressed_bytes:
            raise ArtifactTooLarge(
                f"update.tar: more than {limits.artifact_decompressed_bytes} bytes of files"
            )
        yield _Entry(parts=parts, kind=entry.kind, size=entry.size, mode=entry.mode & 0o777), member


def plan_placement(
    info: ArtifactInfo, staged: Stager | dict[str, Path], *, limits: Limits = DEFAULT_LIMITS
) -> Placement:
    """Check a verified artifact's payload for placement; touch nothing.

    `staged` maps payload file names to staged files (or is the `Stager` used while reading).

    Raises:
        ArtifactStructureError: not exactly one payload, unsupported type, missing module file.
        ArtifactUnsigned: a payload file comes from manifest-augment (not signed).
        ArtifactUnsafePath: dest_dir not absolute, "/" for directory, escaping names, links,
            devices in update.tar.
        ArtifactTooLarge: update.tar beyond `limits`.
    """
    if len(info.payloads) != 1:
        raise ArtifactStructureError(
            f"artifact has {len(info.payloads)} payloads; Mender clients 3.x install exactly one"
        )
    ptype = info.payloads[0].type
    files = staged.files.get(0, {}) if isinstance(staged, Stager) else staged
    unsigned = [f.name for f in info.payloads[0].files if f.augmented]
    if unsigned:
        raise ArtifactUnsigned(
            f"payload files {', '.join(unsigned)} come from manifest-augment, which the artifact's"
            " signature does not cover; gapferry does not place unsigned files",
            remedy="ask the publisher for an artifact without augmented files",
        )
    if ptype == "single-file":
        dest = _dest_dir(_text(files, "dest_dir", ptype), kind=ptype)
        filename = _text(files, "filename", ptype)
        if not filename or "/" in filename or filename in (".", ".."):
            raise _unsafe(f"single-file filename {filename!r} is not a plain file name")
        if filename not in files:
            raise ArtifactStructureError(
                f"single-file payload names {filename!r} but does not carry it"
            )
        mode = 0o600
        if "permissions" in files:
            perm = _text(files, "permissions", ptype).strip()
            if not _PERMS.match(perm):
                raise ArtifactStructureError(
                    f"single-file permissions {perm!r} is not an octal mode (gapferry accepts octal only)"
                )
            mode = int(perm, 8) & 0o777
        return Placement(
            kind=ptype, dest_dir=dest, filename=filename, mode=mode, source=files[filename]
        )
    if ptype == "directory":
        dest = _dest_dir(_text(files, "dest_dir", ptype), kind=ptype)
        tar = files.get("update.tar")
        if tar is None:
            raise ArtifactStructureError("directory payload has no 'update.tar' file")
        entries = size = 0
        with tar.open("rb") as f:
            for entry, _ in _entries(f, limits):
                entries += 1
                size += entry.size
        return Placement(kind=ptype, dest_dir=dest, source=tar, entries=entries, size=size)
    raise ArtifactStructureError(
        f"payload type {ptype!r} cannot be placed as files (only single-file and directory)",
        remedy="install this artifact with the Mender client on the device",
    )


# --- file system walking without following links -------------------------------------------------


def _open_dir(root_fd: int, parts: tuple[str, ...], *, create: bool) -> int:
    """Open root/parts as a folder fd, refusing symlinks at every level; mkdir -p when `create`."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe(
                        f"{'/'.join(parts)}: {part!r} on the device is a symbolic link or not a"
                        " folder; gapferry does not follow links"
                    ) from e
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _rmtree_at(dir_fd: int, name: str) -> None:
    st = _lstat(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        for child in os.listdir(sub):  # noqa: PTH208 - by fd: no link is followed
            _rmtree_at(sub, child)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def _copy_into(src: Path | int, dir_fd: int, name: str, mode: int) -> None:
    """Copy `src` (a path, or an open fd that this takes over) to a new file `name` in `dir_fd`."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    with (
        os.fdopen(fd, "wb") as out,
        os.fdopen(src, "rb") if isinstance(src, int) else src.open("rb") as f,
    ):
        shutil.copyfileobj(f, out, CHUNK)
        os.fchmod(out.fileno(), mode)
        out.flush()
        os.fsync(out.fileno())


def _extract(tar: Path, dir_fd: int, limits: Limits) -> None:
    dir_modes: list[tuple[tuple[str, ...], int]] = []
    with tar.open("rb") as f:
        for entry, member in _entries(f, limits):
            parent = (
                _open_dir(dir_fd, entry.parts[:-1], create=True) if entry.parts else os.dup(dir_fd)
            )
            try:
                if entry.kind == "dir":
                    if entry.parts:
                        st = _lstat(parent, entry.parts[-1])
                        if st is None:
                            os.mkdir(entry.parts[-1], 0o700, dir_fd=parent)
                        elif not stat.S_ISDIR(st.st_mode):
                            raise _unsafe(
                                f"update.tar: {'/'.join(entry.parts)} is both a file and a folder"
                            )
                    dir_modes.append((entry.parts, entry.mode))
                    continue
                name = entry.parts[-1]
                if _lstat(parent, name) is not None:
                    raise _unsafe(f"update.tar: {'/'.join(entry.parts)} appears twice")
                fd = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent
                )
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                with os.fdopen(fd, "wb") as out:
                    while n := member.readinto(view):
                        out.write(view[:n])
                    os.fchmod(out.fileno(), entry.mode)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                os.close(parent)
    # Folder modes last (a read-only folder must not block its own extraction), deepest first.
    for parts, mode in sorted(dir_modes, key=lambda x: -len(x[0])):
        d = _open_dir(dir_fd, parts, create=False)
        try:
            os.fchmod(d, mode)
        finally:
            os.close(d)


def apply_placement(placement: Placement, root: Path, *, limits: Limits = DEFAULT_LIMITS) -> Backup:
    """Place the payload under `root` (``dest_dir`` is interpreted below `root`, never the real
    ``/`` unless `root` is ``/``). On any failure the previous state is restored before raising.

    Raises:
        ArtifactUnsafePath: a link on the device path, or a hostile update.tar entry.
        EnvironmentFailure: the file system refused (permissions, space).
    """
    rel = tuple(p for p in placement.dest_dir.split("/") if p)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if placement.kind == "single-file":
            return _apply_single(placement, root, root_fd, rel)
        return _apply_directory(placement, root, root_fd, rel, limits)
    except OSError as e:
        raise EnvironmentFailure(
            f"placing {placement.dest_dir} under {root} failed: {e}",
            remedy="check free space and permissions on the target, then try again",
            code="placement-failed",
        ) from e
    finally:
        os.close(root_fd)


def _apply_single(placement: Placement, root: Path, root_fd: int, rel: tuple[str, ...]) -> Backup:
    if placement.filename is None or placement.mode is None:
        raise ArtifactStructureError("single-file placement without filename or mode")
    name = placement.filename
    target = "/".join((*rel, name))
    dir_fd = _open_dir(root_fd, rel, create=True)
    try:
        st = _lstat(dir_fd, name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _unsafe(f"{placement.dest_dir}/{name} exists and is not a regular file")
        backup_name: str | None = None
        if st is not None:
            backup_name = f".{name}{_BACKUP_SUFFIX}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup_name, dir_fd=dir_fd)
            try:
                os.link(
                    name, backup_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False
                )
            except OSError:  # no hard links on this file system: copy instead
                old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                _copy_into(old, dir_fd, backup_name, stat.S_IMODE(st.st_mode))
        backup = Backup(
            root=root,
            kind="single-file",
            target=target,
            backup="/".join((*rel, backup_name)) if backup_name else None,
        )
        tmp = f".{name}{_NEW_SUFFIX}"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            _copy_into(placement.source, dir_fd, tmp, placement.mode)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            restore(backup)
            raise
        return backup
    finally:
        os.close(dir_fd)


def _apply_directory(
    placement: Placement, root: Path, root_fd: int, rel: tuple[str, ...], limits: Limits
) -> Backup:
    parent_fd = _open_dir(root_fd, rel[:-1], create=True)
    name = rel[-1]
    try:
        st = _lstat(parent_fd, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise _unsafe(f"{placement.dest_dir} exists and is not a folder")
        new = f".{name}{_NEW_SUFFIX}"
        _rmtree_at(parent_fd, new)
        os.mkdir(new, 0o755, dir_fd=parent_fd)
        backup_name: str | None = None
        parent_rel = "/".join(rel[:-1])
        backup = Backup(root=root, kind="directory", target="/".join(rel), backup=None)
        try:
            new_fd = _open_dir(parent_fd, (new,), create=False)
            try:
                _extract(placement.source, new_fd, limits)
                os.fsync(new_fd)
            finally:
                os.close(new_fd)
            if st is not None:
                backup_name = f".{name}{_BACKUP_SUFFIX}"
                _rmtree_at(parent_fd, backup_name)
                os.rename(name, backup_name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                backup = Backup(
                    root=root,
                    kind="directory",
                    target="/".join(rel),
                    backup="/".join(p for p in (parent_rel, backup_name) if p),
                )
            os.rename(new, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            os.fsync(parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                _rmtree_at(parent_fd, new)
            if backup_name is not None:
                restore(backup)
            raise
        return backup
    finally:
        os.close(parent_fd)


def _split(rel: str) -> tuple[tuple[str, ...], str]:
    parts = tuple(PurePosixPath(rel).parts)
    return parts[:-1], parts[-1]


def restore(backup: Backup) -> None:
    """Undo an `apply_placement`: put the previous file or folder back (or remove the new one when
    there was none before). Like the modules' ArtifactRollback.

    Raises:
        EnvironmentFailure: the file system refused.
    """
    parent_parts, name = _split(backup.target)
    root_fd = os.open(backup.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parent = _open_dir(root_fd, parent_parts, create=False)
        try:
            if backup.backup is None:
                _rmtree_at(parent, name)
            else:
                _, bname = _split(backup.backup)
                if backup.kind == "directory":
                    _rmtree_at(parent, name)
                    os.rename(bname, name, src_dir_fd=parent, dst_dir_fd=parent)
                else:
                    os.replace(bname, name, src_dir_fd=parent, dst_dir_fd=parent)
            os.fsync(parent)
        finally:
            os.close(parent)
    except OSError as e:
        raise EnvironmentFailure(
            f"restoring {backup.target} under {backup.root} failed: {e}",
            remedy="check the target by hand; the previous content is kept next to it with the"
            f" suffix {_BACKUP_SUFFIX}",
            code="restore-failed",
        ) from e
    finally:
        os.close(root_fd)


def commit(backup: Backup) -> None:
    """Drop the backup of a successful placement (like the modules' Cleanup).

    Raises:
        EnvironmentFailure: the file system refused.
    """
    if backup.backup is None:
        return
    parent_parts, bname = _split(backup.backup)
    root_fd = os.open(backup.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parent = _open_dir(root_fd, parent_parts, create=False)
        try:
            _rmtree_at(parent, bname)
        finally:
            os.close(parent)
    except OSError as e:
        raise EnvironmentFailure(
            f"removing the backup {backup.backup} under {backup.root} failed: {e}",
            remedy="remove it by hand",
            code="cleanup-failed",
        ) from e
    finally:
        os.close(root_fd)
