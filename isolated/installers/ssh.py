"""Run commands on a device with the OpenSSH client (issue 6 step 3, notes section 4).

The system ``ssh`` is used as a subprocess, so the technician's OpenSSH config, agent, FIDO keys
and known_hosts all work as they do on the command line. Always: ``BatchMode=yes`` (never a
prompt), ``StrictHostKeyChecking=yes`` (an unknown or changed host key is refused, never
accepted), one ControlMaster connection per device for the whole run (socket in a private 0700
folder; closed with ``ssh -O exit``), keep-alives so a pulled cable is noticed.

ssh exits 255 on its own errors; the stderr text tells which (`SshFailure.code`):
``host-key`` (unknown or changed host key), ``auth``, ``unreachable``, ``connection-lost``.
"""

from __future__ import annotations

import collections
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gapferry.common.digest import CHUNK, Readable
from gapferry.common.errors import EnvironmentFailure
from gapferry.isolated.devices import DeviceTarget
from gapferry.isolated.installers.bounded import Tail, run_bounded

__all__ = ["HOLD_BACK", "Remote", "SshFailure", "SshSession", "classify_ssh_error", "ssh_options"]

#: Bytes of the artifact's end kept back until the laptop has re-checked the whole stream's
#: sha256: if the medium's bytes changed after verification, the device never receives a complete
#: artifact (the last payload bytes are missing, so the client's reader fails).
HOLD_BACK = 1024 * 1024


class SshFailure(EnvironmentFailure):
    """ssh itself failed (exit 255): host key, authentication, network."""

    code = "ssh-failed"


@dataclass(frozen=True, kw_only=True)
class Remote:
    """A finished remote command: exit code and the (bounded) output."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


def classify_ssh_error(stderr: str) -> tuple[str, str]:
    s = stderr.lower()
    if "remote host identification has changed" in s:
        return "host-key-changed", (
            "the device's host key differs from the one in known_hosts: this may be an attack,"
            " or the device was re-installed; check with whoever manages the device before"
            " updating known_hosts"
        )
    if "host key verification failed" in s or "no matching host key" in s:
        return "host-key", (
            "the device's host key is not in known_hosts; get its fingerprint from a trusted"
            " source and add it (gapferry never accepts unknown host keys)"
        )
    if "permission denied" in s or "too many authentication failures" in s:
        return "auth", "check the user and key for this device (identity_file, agent)"
    if any(
        t in s for t in ("connection refused", "timed out", "no route to host", "could not resolve")
    ):
        return "unreachable", "check that the device is powered on and on the network"
    return "connection-lost", "check the cable and the device, then run the same bundle again"


def ssh_options(target: DeviceTarget, *, control_path: Path) -> list[str]:
    """The options every OpenSSH client call (``ssh``, ``sftp``) gets for `target`: its config
    file, identity and known_hosts, strict host key checking, batch mode, one ControlMaster
    connection (socket `control_path`), keep-alives, no forwarding. Port, user and host are left
    to the caller (``ssh -p`` / ``sftp -P`` differ)."""
    t = target
    argv: list[str] = []
    if t.ssh_config:
        argv += ["-F", t.ssh_config]
    opts = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "ControlMaster": "auto",
        "ControlPath": str(control_path),
        "ControlPersist": "120",
        "ConnectTimeout": "15",
        "ServerAliveInterval": "5",
        "ServerAliveCountMax": "4",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "RequestTTY": "no",
        "LogLevel": "ERROR",
    }
    if t.known_hosts:
        opts["UserKnownHostsFile"] = t.known_hosts
        opts["GlobalKnownHostsFile"] = "/dev/null"
    if t.identity_file:
        argv += ["-i", t.identity_file]
        opts["IdentitiesOnly"] = "yes"
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    return argv


class SshSession:
    """Commands on one device over one multiplexed SSH connection."""

    def __init__(self, target: DeviceTarget, *, control_dir: Path, name: str) -> None:
        if not target.host:
            raise ValueError("an SSH target needs a host")
        self.target = target
        self.name = name
        self._control = control_dir / "cm-%C"
        self._opened = False

    def base_argv(self) -> list[str]:
        t = self.target
        argv = ["ssh", *ssh_options(t, control_path=self._control)]
        if t.port:
            argv += ["-p", str(t.port)]
        if t.user:
            argv += ["-l", t.user]
        argv += ["--", t.host or ""]
        return argv

    def argv(self, command: str) -> list[str]:
        return [*self.base_argv(), command]

    def _raise_if_ssh_failed(self, rc: int, stderr: bytes) -> None:
        if rc != 255:
            return
        text = stderr.decode("utf-8", "replace").strip()
        code, remedy = classify_ssh_error(text)
        last = text.splitlines()[-1] if text else "ssh exited 255"
        raise SshFailure(
            f"{self.name}: ssh to {self.target.host}: {last}", remedy=remedy, code=code
        )

    def run(
        self, command: str, *, timeout: float = 120, input_bytes: bytes | None = None
    ) -> Remote:
        """Run `command` (a shell string on the device).

        Raises:
            SshFailure: ssh failed (exit 255) or the command ran past `timeout`.
        """
        try:
            p = run_bounded(
                self.argv(command),
                input_bytes=input_bytes if input_bytes is not None else b"",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise SshFailure(
                f"{self.name}: {command!r} did not finish within {timeout:.0f} s",
                remedy="check the device; raise command_timeout in the devices file if needed",
                code="timeout",
            ) from e
        self._opened = True
        self._raise_if_ssh_failed(p.returncode, p.stderr)
        return Remote(rc=p.returncode, stdout=p.stdout, stderr=p.stderr)

    def run_argv(self, argv: list[str], *, timeout: float = 120) -> Remote:
        return self.run(shlex.join(argv), timeout=timeout)

    def _timeout(self, what: str, timeout: float) -> SshFailure:
        return SshFailure(
            f"{self.name}: {what} took longer than {timeout:.0f} s",
            remedy="check the link to the device; raise command_timeout in the devices file",
            code="timeout",
        )

    def stream(
        self,
        command: str,
        source: Readable,
        *,
        total: int,
        timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> Remote:
        """Run `command` with `source` on its stdin, holding back the last `HOLD_BACK` bytes until
        `source` has reached its end without error (`ArtifactStream` re-checks the sha256 there).

        Raises:
            SshFailure: ssh failed, the connection was lost, or `timeout` passed.
            Whatever `source.readinto` raises (after the remote side was cut off).
        """
        proc = subprocess.Popen(
            self.argv(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._opened = True
        assert proc.stdin is not None  # noqa: S101
        assert proc.stdout is not None  # noqa: S101
        assert proc.stderr is not None  # noqa: S101
        out, err = Tail(proc.stdout), Tail(proc.stderr)
        deadline = time.monotonic() + timeout
        held: collections.deque[bytes] = collections.deque()
        held_size = 0
        sent = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        broken = False
        try:
            while True:
                n = source.readinto(view)  # raises on a digest mismatch at the end
                if not n:
                    break
                held.append(bytes(view[:n]))
                held_size += n
                while held and held_size - len(held[0]) >= HOLD_BACK:
                    chunk = held.popleft()
                    held_size -= len(chunk)
                    broken = not _write(proc.stdin, chunk)
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
                if broken:
                    break
                if time.monotonic() > deadline:
                    raise self._timeout("sending the artifact", timeout)  # noqa: TRY301 - cut the device off in the handler below
            while held and not broken:
                chunk = held.popleft()
                broken = not _write(proc.stdin, chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, total)
            _close(proc.stdin)
        except BaseException:
            # Cut the device off before it sees the complete artifact, then re-raise.
            proc.kill()
            proc.wait()
            _close(proc.stdin)
            out.value()
            err.value()
            raise
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.wait()
            out.value()
            err.value()
            raise SshFailure(
                f"{self.name}: {command!r} did not finish within {timeout:.0f} s",
                remedy="check the device; raise command_timeout in the devices file if needed",
                code="timeout",
            ) from e
        stdout, stderr = out.value(), err.value()
        self._raise_if_ssh_failed(rc, stderr)
        return Remote(rc=rc, stdout=stdout, stderr=stderr)

    def drop_connection(self) -> None:
        """Close the shared connection (``ssh -O exit``); the next command connects anew."""
        if not self._opened:
            return
        subprocess.run(
            [*self.base_argv()[:-2], "-O", "exit", "--", self.target.host or ""],
            capture_output=True,
            timeout=15,
            check=False,
        )

    def close(self) -> None:
        self.drop_connection()
        self._opened = False


def _write(pipe: IO[bytes], data: bytes) -> bool:
    try:
        pipe.write(data)
        pipe.flush()
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _close(pipe: IO[bytes]) -> None:
    try:
        pipe.close()
    except (BrokenPipeError, ConnectionResetError):
        return
