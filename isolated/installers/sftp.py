"""Run ``sftp -b -`` batches on a device with the OpenSSH client (ADR 0054).

The same OpenSSH options as `gapferry.isolated.installers.ssh` (`ssh_options`: strict host key
checking, BatchMode, one ControlMaster connection per device). Each batch is one ``sftp``
process; ``sftp -b`` stops at the first failing command (exit 1) unless the command starts with
``-``. sftp exits 255 when ssh itself failed: that becomes `SshFailure` with the same codes as
the SSH installer (``host-key``, ``auth``, ``unreachable``, ``connection-lost``); sftp killed by a
signal (SIGPIPE: the connection died under an upload) is ``connection-lost`` too.

Paths are double-quoted (`quote`): sftp then takes glob characters literally. Names with control
characters (a newline would end a batch command) are refused by `check_name`.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gapferry.common.errors import EnvironmentFailure
from gapferry.isolated.devices import DeviceTarget
from gapferry.isolated.installers.ssh import SshFailure, classify_ssh_error, ssh_options

__all__ = ["Batch", "SftpFailure", "SftpSession", "check_name", "quote"]

#: Bytes of a batch's stdout kept; longer output makes the batch fail (listings are bounded).
OUTPUT_MAX = 8 * 1024 * 1024
#: Bytes of stderr kept (the tail).
ERR_TAIL = 64 * 1024


class SftpFailure(EnvironmentFailure):
    """An sftp command failed on the device (permissions, space, a missing folder)."""

    code = "sftp-failed"


def check_name(path: str) -> None:
    """Refuse a path that an sftp batch line cannot carry.

    Raises:
        ValueError: it contains a control character.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError(f"path {path!r} contains a control character")


def quote(path: str) -> str:
    """`path` as one sftp batch argument, taken literally (no glob)."""
    check_name(path)
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, kw_only=True)
class Batch:
    """A finished batch: exit code (0 or 1), stdout (bounded) and the tail of stderr."""

    rc: int
    stdout: str
    stderr: str


class SftpSession:
    """sftp batches on one device over one multiplexed connection."""

    def __init__(self, target: DeviceTarget, *, name: str, workdir: Path) -> None:
        if not target.host:
            raise ValueError("an SFTP target needs a host")
        self.target = target
        self.name = name
        self._workdir = workdir
        # sun_path is 108 bytes: keep the ControlMaster socket short (/tmp/gf-XXXX/cm-%C).
        self._control_dir = Path(tempfile.mkdtemp(prefix="gf-"))
        self._options = ssh_options(target, control_path=self._control_dir / "cm-%C")
        self._opened = False

    def _argv(self, program: str) -> list[str]:
        t = self.target
        argv = [program, *self._options]
        if t.port:
            argv += ["-o", f"Port={t.port}"]
        if t.user:
            argv += ["-o", f"User={t.user}"]
        return argv

    def run(self, lines: list[str], *, timeout: float) -> Batch:
        """Run `lines` as one ``sftp -b -`` batch.

        Raises:
            SshFailure: ssh failed (exit 255), sftp was killed by a signal (the connection died),
                or the batch ran past `timeout`.
            SftpFailure: the output was larger than `OUTPUT_MAX`.
        """
        script = ("\n".join(lines) + "\n").encode()
        argv = [*self._argv("sftp"), "-b", "-", "--", self.target.host or ""]
        with (
            tempfile.TemporaryFile(dir=self._workdir) as out,
            tempfile.TemporaryFile(dir=self._workdir) as err,
        ):
            try:
                p = subprocess.run(
                    argv, input=script, stdout=out, stderr=err, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired as e:
                raise SshFailure(
                    f"{self.name}: sftp did not finish within {timeout:.0f} s",
                    remedy="check the link to the device; raise command_timeout in the devices file",
                    code="timeout",
                ) from e
            self._opened = True
            size = out.seek(0, 2)
            if size > OUTPUT_MAX:
                raise SftpFailure(
                    f"{self.name}: sftp printed more than {OUTPUT_MAX} bytes",
                    remedy="a folder on the device is too large to inspect; clean it up by hand",
                )
            out.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            err.seek(max(0, err.seek(0, 2) - ERR_TAIL))
            stderr = err.read().decode("utf-8", "replace").strip()
        if p.returncode == 255:
            code, remedy = classify_ssh_error(stderr)
            last = stderr.splitlines()[-1] if stderr else "sftp exited 255"
            raise SshFailure(
                f"{self.name}: sftp to {self.target.host}: {last}", remedy=remedy, code=code
            )
        if p.returncode < 0:
            # sftp was killed by a signal: SIGPIPE when its ssh connection died under a write.
            raise SshFailure(
                f"{self.name}: sftp to {self.target.host}: the connection was lost"
                f" (sftp ended by signal {-p.returncode})",
                remedy="check the cable and the device, then run the same bundle again",
                code="connection-lost",
            )
        return Batch(rc=p.returncode, stdout=stdout, stderr=stderr)

    def must(self, lines: list[str], *, timeout: float, what: str) -> Batch:
        """`run`, and fail unless every command succeeded.

        Raises:
            SftpFailure: a command failed (the message has sftp's last error line).
            SshFailure: as `run`.
        """
        b = self.run(lines, timeout=timeout)
        if b.rc != 0:
            last = b.stderr.splitlines()[-1] if b.stderr else f"sftp exited {b.rc}"
            raise SftpFailure(
                f"{self.name}: {what}: {last}",
                remedy="check permissions and free space on the device",
            )
        return b

    def close(self) -> None:
        """Close the shared connection (``ssh -O exit``) and remove the socket folder."""
        try:
            if self._opened:
                subprocess.run(
                    [*self._argv("ssh"), "-O", "exit", "--", self.target.host or ""],
                    capture_output=True,
                    timeout=15,
                    check=False,
                )
        finally:
            for p in self._control_dir.iterdir():
                p.unlink(missing_ok=True)
            self._control_dir.rmdir()
