"""Install with the device's own ``mender`` client (3.4, standalone mode) over SSH.

Implements issue 6 step 3 with the client's real behaviour
(`../shared/mender/artifact-and-client.md` sections 3 and 4):

1. Look, change nothing (one SSH command): ``show-artifact``, ``show-provides``, the device type,
   ``mender.conf`` (both the main and the fallback file), the boot id, and whether an update waits
   for commit. The probe for a pending update is read-only: the update-module work folder
   ``<datadir>/modules/v3/payloads/NNNN/tree/header/artifact_name`` exists from install until
   commit/rollback (3.4). ``mender commit``/``rollback`` would answer too, but they act.
2. Refuse before sending anything: device type and depends against the device's own values
   (``failure``); an uncommitted update (``skipped``: "found and reported, not overwritten",
   because a second install replaces the pending state, gotcha 9); ``ArtifactVerifyKey``
   configured but the file missing (``skipped``: the client would silently install unverified,
   gotcha 6). Already running the artifact: ``already-installed``, nothing sent.
3. Send: ``mender install --reboot-exit-code /dev/stdin`` fed from the bundle's stream (no copy on
   the laptop; the last `HOLD_BACK` bytes wait for the stream's sha256 re-check), or
   ``transfer = "tempfile"``: copy into a new private folder on the device while ``sha256sum``
   hashes the same stream there (one pass), compare, install from the copy, remove it.
4. Exit 4 (the payload needs a reboot): run ``reboot_command``, wait until the device answers
   with a new boot id, continue. Then ``check_command`` (if set), then ``mender commit``; on any
   failure ``mender rollback``. Read ``show-artifact``, ``show-provides`` and the inventory.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gapferry.common.artifact.compat import check_compatible
from gapferry.common.artifact.errors import ArtifactIncompatible
from gapferry.common.bundle import InventoryAttribute
from gapferry.common.errors import InvalidData
from gapferry.isolated.installers.base import InstallJob
from gapferry.isolated.installers.ssh import Remote, SshFailure, SshSession
from gapferry.isolated.report import DeviceReport

__all__ = ["DATA_DIR", "DeviceState", "MenderSshInstaller", "parse_inventory", "parse_probe"]

#: The client's data dir on a device (``--data`` default).
DATA_DIR = "/var/lib/mender"
_MENDER = ["mender", "--no-syslog"]
#: Inventory scripts never run by the applier: they call out to the Internet.
_SKIP_INVENTORY = ("mender-inventory-geo",)
_SECTION = re.compile(r"^@@gapferry:([a-z_]+)(?: (.*))?$")

_PROBE = f"""
D={DATA_DIR}
echo @@gapferry:artifact; mender --no-syslog show-artifact 2>/dev/null; echo "@@gapferry:artifact_rc $?"
echo @@gapferry:provides; mender --no-syslog show-provides 2>/dev/null
echo @@gapferry:device_type; cat "$D/device_type" 2>/dev/null; echo
echo @@gapferry:conf; cat /etc/mender/mender.conf 2>/dev/null; echo
echo @@gapferry:fallback_conf; cat "$D/mender.conf" 2>/dev/null; echo
echo @@gapferry:pending
for f in "$D"/modules/v3/payloads/*/tree/header/artifact_name; do
  if [ -f "$f" ]; then cat "$f"; echo; fi
done
echo @@gapferry:boot_id; cat /proc/sys/kernel/random/boot_id 2>/dev/null; echo
echo @@gapferry:end
"""

#: Waits (at most ~60 s) until no install of ours (``mender --no-syslog install
#: --reboot-exit-code``, in this mount namespace) runs on the device: after a lost connection it
#: may still be reading what was sent, or cleaning up; the probe must see the state it ends in.
#: ("mender" is assembled at run time so the script never matches itself.)
_WAIT_NO_INSTALL = r"""
m=mend; m="${m}er"; n=0; ns=$(readlink /proc/self/ns/mnt)
while [ $n -lt 300 ]; do
  busy=
  for p in /proc/[0-9]*; do
    case "$(tr '\000' ' ' < "$p/cmdline" 2>/dev/null)" in
      *"$m --no-syslog install --reboot-exit-code "*)
        if [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then busy=1; break; fi ;;
    esac
  done
  [ -z "$busy" ] && exit 0
  sleep 0.2; n=$((n + 1))
done
exit 1
"""

#: Run before ``mender install``: SIGPIPE ignored, inherited by the client (a Go program started
#: with SIGPIPE ignored gets EPIPE errors instead of dying). When the connection drops, the
#: client is not killed by its next log line in the middle of a state: it runs to its own end
#: (input ended early: a failed download; input complete: an installed, pending update that
#: `_Run.lost` then rolls back once `_WAIT_NO_INSTALL` has seen it finish).
_KEEP_ON_HANGUP = "trap '' PIPE; exec "

_INVENTORY = f"""
echo @@gapferry:scripts
for s in /usr/share/mender/inventory/mender-inventory-*; do
  case "$s" in {"|".join("*/" + n for n in _SKIP_INVENTORY)}) continue ;; esac
  if [ -x "$s" ]; then "$s" 2>/dev/null; echo; fi
done
echo @@gapferry:os_release; cat /etc/os-release 2>/dev/null; echo
echo @@gapferry:kernel; uname -r 2>/dev/null
echo @@gapferry:artifact; mender --no-syslog show-artifact 2>/dev/null
echo @@gapferry:provides; mender --no-syslog show-provides 2>/dev/null
echo @@gapferry:device_type; cat {DATA_DIR}/device_type 2>/dev/null; echo
echo @@gapferry:end
"""


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = out.setdefault(m.group(1), [])
            if m.group(2) is not None:
                current.append(m.group(2))
            continue
        if current is not None:
            current.append(line)
    return out


def _kv(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    """What the read-only probe found."""

    artifact_name: str | None
    provides: dict[str, str]
    device_type: str | None
    verify_keys: tuple[str, ...]
    pending: tuple[str, ...]
    boot_id: str


def _verify_keys(conf_text: str) -> list[str]:
    """ArtifactVerifyKey / ArtifactVerifyKeys from a mender.conf (JSON); empty if none."""
    text = conf_text.strip()
    if not text:
        return []
    try:
        conf = json.loads(text)
    except ValueError:
        return []
    if not isinstance(conf, dict):
        return []
    keys = []
    one = conf.get("ArtifactVerifyKey")
    if isinstance(one, str) and one:
        keys.append(one)
    many = conf.get("ArtifactVerifyKeys")
    if isinstance(many, list):
        keys += [k for k in many if isinstance(k, str) and k]
    return keys


def parse_probe(text: str) -> DeviceState:
    """Parse the probe's output (sections ``@@gapferry:NAME``)."""
    s = _sections(text)
    rc = (s.get("artifact_rc") or ["1"])[0].strip()
    name = "\n".join(s.get("artifact", [])).strip()
    dt = _kv(s.get("device_type", [])).get("device_type")
    main = "\n".join(s.get("conf", []))
    fallback = "\n".join(s.get("fallback_conf", []))
    keys = _verify_keys(main) or _verify_keys(fallback)
    pending = tuple(p.strip() for p in s.get("pending", []) if p.strip())
    return DeviceState(
        artifact_name=name if rc == "0" and name else None,
        provides=_kv(s.get("provides", [])),
        device_type=dt,
        verify_keys=tuple(keys),
        pending=pending,
        boot_id="\n".join(s.get("boot_id", [])).strip(),
    )


def parse_inventory(text: str, *, max_attributes: int, max_value: int) -> list[InventoryAttribute]:
    """Inventory attributes from the inventory command's output, Mender's way: ``key=value``
    lines, a key seen several times becomes a list. The client's own facts come first (artifact
    name, device type, provides; os and kernel when no script reports them), then the scripts'
    attributes, up to `max_attributes`; each value is cut to `max_value` bytes in total.
    """
    s = _sections(text)
    scripts: dict[str, list[str]] = {}
    for line in s.get("scripts", []):
        if "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            if k and v and len(k) <= 256 and len(scripts) <= max_attributes * 4:
                scripts.setdefault(k, []).append(v)
    core: dict[str, list[str]] = {}
    name = "\n".join(s.get("artifact", [])).strip()
    if name:
        core["artifact_name"] = [name]
    dt = _kv(s.get("device_type", [])).get("device_type")
    if dt:
        core["device_type"] = [dt]
    osr = _kv(s.get("os_release", []))
    if "os" not in scripts and osr.get("PRETTY_NAME"):
        core["os"] = [osr["PRETTY_NAME"].strip('"')]
    kernel = "\n".join(s.get("kernel", [])).strip()
    if "kernel" not in scripts and kernel:
        core["kernel"] = [kernel]
    for k, v in sorted(_kv(s.get("provides", [])).items()):
        core.setdefault(k, [v])
    for k, vs in scripts.items():
        core.setdefault(k, vs)
    attrs = []
    for k, vs in list(core.items())[:max_attributes]:
        kept: list[str | int | float] = []
        total = 0
        for raw in dict.fromkeys(vs):
            v = raw.encode()[:max_value].decode("utf-8", "ignore")
            if total + len(v) > max_value:
                break
            kept.append(v)
            total += len(v)
        if kept:
            attrs.append(InventoryAttribute(name=k, value=kept[0] if len(kept) == 1 else kept))
    return attrs


#: Marks the lines of gapferry's own output in a device command's stdout.
_MARK = "@@gapferry:"


def _parse_copy(stdout: str) -> tuple[str | None, str | None]:
    """tee's exit code and the sha256 from the tempfile copy's output (either may be None)."""
    tee_rc = digest = None
    for line in stdout.splitlines():
        if line.startswith(f"{_MARK}tee "):
            tee_rc = line[len(_MARK) + 4 :].strip()
        elif re.fullmatch(r"[0-9a-f]{64}\s+-?\s*", line):
            digest = line.split()[0]
    return tee_rc, digest


def _tail(text: str, lines: int = 8) -> str:
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def _client_error(remote: Remote) -> str:
    """The client's last error message (logrus ``msg="..."``), else the last lines."""
    msgs = re.findall(r'level=(?:error|fatal) msg="((?:[^"\\]|\\.)*)"', remote.err)
    if msgs:
        return str(msgs[-1]).replace('\\"', '"')
    return _tail(remote.err or remote.text, 3) or f"exit code {remote.rc}"


class MenderSshInstaller:
    """The ``mender-ssh`` method."""

    method = "mender-ssh"

    def install(self, job: InstallJob) -> DeviceReport:
        # The ControlMaster socket path must stay short (sun_path is 108 bytes): /tmp/gf-XXXX/.
        control = Path(tempfile.mkdtemp(prefix="gf-"))
        session = SshSession(job.target, control_dir=control, name=job.device.name)
        try:
            return _Run(job, session).run()
        finally:
            session.close()
            shutil.rmtree(control, ignore_errors=True)


class _Run:
    """One device's install, step by step."""

    def __init__(self, job: InstallJob, session: SshSession) -> None:
        self.job = job
        self.ssh = session
        self.log = job.log
        self.name = job.artifact.name
        self.timeout = job.target.command_timeout

    def finish(self, outcome: str, reason: str | None = None, **kw: object) -> DeviceReport:
        d = self.job.device
        return self.log.finish(
            mender_device_id=d.mender_device_id,
            deployment_id=d.deployment.id,
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            **kw,  # type: ignore[arg-type]
        )

    def mender(self, *args: str, timeout: float | None = None) -> Remote:
        r = self.ssh.run_argv([*_MENDER, *args], timeout=timeout or self.timeout)
        self.log.log("info", f"$ mender {' '.join(args)} -> exit {r.rc}")
        for text in (r.text, r.err):
            if text:
                self.log.log("debug", text)
        return r

    def probe(self) -> DeviceState:
        r = self.ssh.run(_PROBE, timeout=120)
        return parse_probe(r.stdout.decode("utf-8", "replace"))

    def inventory(self) -> tuple[list[InventoryAttribute], str | None]:
        try:
            r = self.ssh.run(_INVENTORY, timeout=300)
        except SshFailure as e:
            self.log.log("warning", f"inventory not collected: {e.message}")
            return [], None
        text = r.stdout.decode("utf-8", "replace")
        lim = self.job.limits
        attrs = parse_inventory(
            text, max_attributes=lim.inventory_attributes, max_value=lim.inventory_value_bytes
        )
        name = "\n".join(_sections(text).get("artifact", [])).strip() or None
        return attrs, name

    def roll_back_own(self) -> DeviceState:
        """Roll back our own interrupted install and look again. ``mender rollback`` exit 2 means
        the client has nothing pending: the work folder the probe saw was left by an install
        that failed while downloading (3.4 leaves it when its input ends early), and a new
        install replaces it; it is then not counted as pending.

        Raises:
            SshFailure: the device could not be reached.
        """
        r = self.mender("rollback")
        state = self.probe()
        if r.rc == 2 and state.pending:
            self.log.log(
                "info",
                "the client has no update pending; the work folder is left from an interrupted"
                " download and the next install replaces it",
            )
            return dataclasses.replace(state, pending=())
        return state

    def skipped(self, reason: str, code: str) -> DeviceReport:
        return self.finish("skipped", reason, retry=True, code=code)

    def run(self) -> DeviceReport:
        job = self.job
        try:
            state = self.probe()
        except SshFailure as e:
            return self.skipped(f"{e.message}. {e.remedy}", e.code)
        self.log.log(
            "info",
            f"device runs {state.artifact_name!r}, device type {state.device_type!r},"
            f" boot id {state.boot_id}",
        )
        try:
            if state.pending:
                if job.interrupted_before and all(p == self.name for p in state.pending):
                    # Our own install from an interrupted earlier run: undo it, then start over.
                    self.log.log(
                        "warning",
                        f"an interrupted earlier run left {self.name!r} uncommitted: rolling back",
                    )
                    job.mark_started()
                    state = self.roll_back_own()
                if state.pending:
                    return self.skipped(
                        f"an update ({', '.join(state.pending)}) is installed but not committed on"
                        " the device; gapferry does not overwrite it. On the device, run `mender"
                        " commit` or `mender rollback`, then run the same bundle again (if both"
                        " say there is nothing to commit, an install failed while downloading and"
                        f" left {DATA_DIR}/modules/v3/payloads/0000/tree: remove that folder)",
                        "busy",
                    )
            return self.install(state)
        except SshFailure as e:
            return self.lost(e)
        except InvalidData as e:
            # The bundle's stream failed its re-check while sending (the medium's bytes changed):
            # the device was cut off before the end of the artifact.
            return self.lost(e)

    def lost(self, e: SshFailure | InvalidData) -> DeviceReport:
        """The connection broke (or the artifact stream failed) during a change: look again once,
        undo what is pending."""
        self.log.log("error", e.message)
        self.ssh.drop_connection()
        try:
            if self.ssh.run(_WAIT_NO_INSTALL, timeout=120).rc != 0:
                self.log.log("warning", "a `mender install` still runs on the device after 60 s")
            state = self.probe()
            if state.pending:
                self.log.log("warning", "rolling back the interrupted update")
                state = self.roll_back_own()
            attrs, after = self.inventory()
        except SshFailure as again:
            return self.skipped(
                f"{e.message}; the device could not be reached again ({again.message}); its"
                " state is unknown. Run the same bundle again: it looks before it installs",
                e.code,
            )
        if after == self.name:
            return self.finish(
                "success",
                inventory=attrs,
                artifact_name_after=after,
                reason="the connection broke, but the device runs the artifact",
            )
        return self.finish(
            "skipped",
            f"{e.message}; nothing was left installed on the device. Run the same bundle again",
            retry=True,
            code=e.code,
            inventory=attrs,
            artifact_name_after=after,
        )

    def install(self, state: DeviceState) -> DeviceReport:
        job, info = self.job, self.job.artifact
        if state.device_type is None:
            return self.skipped(
                f"the device reports no device type ({DATA_DIR}/device_type): is the Mender"
                " client installed and provisioned?",
                "not-a-mender-device",
            )
        if state.artifact_name == self.name:
            attrs, after = self.inventory()
            return self.finish(
                "already-installed", inventory=attrs, artifact_name_after=after or self.name
            )
        try:
            check_compatible(
                info,
                device_type=state.device_type,
                artifact_name=state.artifact_name or "",
                provides=state.provides,
            )
        except ArtifactIncompatible as e:
            return self.finish(
                "failure",
                f"refused before sending anything: {e.message}",
                code="incompatible",
                artifact_name_after=state.artifact_name,
            )
        if state.verify_keys:
            missing = []
            for key in state.verify_keys:
                t = self.ssh.run(f"test -f {shlex.quote(key)} && test -r {shlex.quote(key)}")
                if t.rc != 0:
                    missing.append(key)
            if missing:
                return self.skipped(
                    f"the device's mender.conf names ArtifactVerifyKey {', '.join(missing)}, but"
                    " the file is missing: the client would install without checking signatures."
                    " Put the key on the device, then run again",
                    "device-verify-key-missing",
                )
        elif job.verify_key is not None:
            self.log.log(
                "warning",
                "the device has no ArtifactVerifyKey; the artifact's signature was verified on"
                " the laptop only",
            )
        job.mark_started()
        self.log.step("downloading")
        r = self.send()
        if r is None:
            return self.finish(
                "failure",
                "the copy on the device does not match the artifact's sha256; nothing installed",
                code="transfer-mismatch",
                artifact_name_after=state.artifact_name,
            )
        if isinstance(r, str):
            return self.finish(
                "skipped",
                f"{r}; nothing was installed. Free space or fix tempdir in the devices file,"
                " then run the same bundle again",
                retry=True,
                code="copy-failed",
                artifact_name_after=state.artifact_name,
            )
        self.log.step("installing")
        if r.rc not in (0, 4):
            reason = f"mender install failed: {_client_error(r)}"
            return self.fail_and_rollback(reason, already_rolled_back=True)
        if r.rc == 4:
            problem = self.reboot(state.boot_id)
            if problem is not None:
                return self.fail_and_rollback(problem, reboot=True)
        if job.target.check_command:
            c = self.ssh.run(job.target.check_command, timeout=self.timeout)
            self.log.log("info", f"$ {job.target.check_command} -> exit {c.rc}")
            if c.rc != 0:
                return self.fail_and_rollback(
                    f"the check command failed (exit {c.rc}): {_tail(c.err or c.text, 3)}",
                    reboot=r.rc == 4,
                )
        c = self.mender("commit")
        if c.rc not in (0, 2):
            return self.fail_and_rollback(f"mender commit failed: {_client_error(c)}")
        attrs, after = self.inventory()
        if after != self.name:
            return self.finish(
                "failure",
                f"after commit the device reports {after!r}, not {self.name!r}",
                inventory=attrs,
                artifact_name_after=after,
            )
        return self.finish("success", inventory=attrs, artifact_name_after=after)

    def send(self) -> Remote | str | None:
        job = self.job
        install = [*_MENDER, "install", "--reboot-exit-code"]
        if job.target.transfer == "stdin":
            with job.open_artifact() as src:
                r = self.ssh.stream(
                    _KEEP_ON_HANGUP + shlex.join([*install, "/dev/stdin"]),
                    src,
                    total=job.artifact.size,
                    timeout=self.timeout,
                    progress=self.log.progress,
                )
            self.log.log("info", f"$ mender install /dev/stdin -> exit {r.rc}")
            for text in (r.text, r.err):
                if text:
                    self.log.log("debug", text)
            return r
        return self.send_tempfile(install)

    def send_tempfile(self, install: list[str]) -> Remote | str | None:
        """``transfer = "tempfile"``: copy into a new private folder (``mkdir -m 700``, a random
        name under ``tempdir``: nothing can be planted there beforehand), hashing on the device
        while writing (``tee`` into ``sha256sum``: the copy is not read a second time before the
        install reads it), compare with the artifact's sha256, install from the copy, remove the
        folder. Returns the install's result, a problem (str) when the copy could not be made,
        or None when the sha256 the device computed differs."""
        job = self.job
        folder = f"{job.target.tempdir.rstrip('/')}/gapferry.{secrets.token_hex(8)}"
        path = f"{folder}/artifact.mender"
        qf, qp = shlex.quote(folder), shlex.quote(path)
        # tee's own exit code goes to the outer stdout (fd 3), around sha256sum: a failed write
        # (disk full) is seen although the stream's hash would match.
        copy = (
            f"umask 077 && mkdir -m 700 {qf} &&"
            f' {{ {{ tee {qp}; echo "{_MARK}tee $?" >&3; }} | sha256sum; }} 3>&1'
        )
        try:
            with job.open_artifact() as src:
                up = self.ssh.stream(
                    copy,
                    src,
                    total=job.artifact.size,
                    timeout=self.timeout,
                    progress=self.log.progress,
                )
            tee_rc, found = _parse_copy(up.text)
            if up.rc != 0 or tee_rc != "0":
                problem = _tail(up.err, 3) or f"exit code {up.rc}"
                self.log.log("error", f"copy to {path} failed: {problem}")
                return f"the copy to {path} on the device failed ({problem})"
            if found != job.artifact.sha256:
                self.log.log("error", f"sha256 of {path} on the device: {found or '?'}")
                return None
            r = self.ssh.run(_KEEP_ON_HANGUP + shlex.join([*install, path]), timeout=self.timeout)
            self.log.log("info", f"$ mender install {path} -> exit {r.rc}")
            if r.err:
                self.log.log("debug", r.err)
            return r
        finally:
            try:
                self.ssh.run_argv(["rm", "-rf", "--", folder])
            except SshFailure as e:
                self.log.log("warning", f"could not remove {folder}: {e.message}")

    def reboot(self, old_boot_id: str) -> str | None:
        """Reboot and wait for a new boot id. Returns a problem, or None when back."""
        target = self.job.target
        self.log.step("rebooting")
        self.log.log("info", f"the payload needs a reboot: $ {target.reboot_command}")
        try:
            self.ssh.run(target.reboot_command, timeout=60)
        except SshFailure as e:
            self.log.log("info", f"reboot: {e.message} (expected while the device goes down)")
        self.ssh.drop_connection()
        deadline = time.monotonic() + target.reboot_timeout
        delay = 1.0
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 10)
            try:
                r = self.ssh.run("cat /proc/sys/kernel/random/boot_id", timeout=30)
            except SshFailure:
                self.ssh.drop_connection()
                continue
            boot_id = r.text
            if r.rc == 0 and boot_id and boot_id != old_boot_id:
                self.log.log("info", f"the device is back (boot id {boot_id})")
                return None
        return (
            f"the device did not come back with a new boot id within {target.reboot_timeout:.0f} s"
        )

    def fail_and_rollback(
        self, reason: str, *, already_rolled_back: bool = False, reboot: bool = False
    ) -> DeviceReport:
        """Roll back what is pending (the client does it itself when ``install`` fails)."""
        self.log.log("error", reason)
        notes = []
        try:
            state = self.probe()
            if state.pending:
                r = self.mender("rollback")
                notes.append("rolled back" if r.rc == 0 else f"rollback failed: {_client_error(r)}")
                if r.rc == 0 and reboot:
                    self.reboot(state.boot_id)
            elif already_rolled_back:
                notes.append("the client rolled back itself")
            attrs, after = self.inventory()
        except SshFailure as e:
            notes.append(f"the device could not be reached to roll back: {e.message}")
            attrs, after = [], None
        return self.finish(
            "failure",
            f"{reason} ({'; '.join(notes) or 'nothing was pending'})",
            code="install-failed",
            inventory=attrs,
            artifact_name_after=after,
        )
