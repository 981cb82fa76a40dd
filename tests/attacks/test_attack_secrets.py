"""A secrets scan over everything a full round trip writes (issue 10).

The round trip runs the real CLI as subprocesses against the Mender stand-in on loopback:
device keygen (encrypted keys, passphrase from the environment), preauth, auth, release upload and
deploy, pack (signing key encrypted, passphrase from the environment), apply (file placement),
ingest and status. While each command runs, a watcher reads ``/proc/<pid>/cmdline`` of the command
and all its descendants (ssh-keygen included).

Scanned: every file on the medium (bundles, logs), the ledger (with its journal) and its WAL,
the applier's record, stdout and stderr of every command, and every observed command line.
Not scanned: the key stores themselves (device keys, the signing keys), whose job is to hold keys.

Secrets looked for: PEM/OpenSSH private key markers; the base64 body (and each body line) of
every private key the run generated or used; the management token; any JWT (device tokens);
both passphrases.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gapferry.fixtures.connected_world import DEVICE_TYPE, World
from gapferry.fixtures.device import single_file_artifact, write_devices_file
from gapferry.fixtures.sim import running_server
from gapferry.fixtures.sshkeys import allowed_signers_line, write_encrypted_key
from gapferry.fixtures.zones import gapferry_argv

pytestmark = [pytest.mark.real_tools, pytest.mark.slow]

_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
_MARKERS = (b"PRIVATE KEY-----", b"OPENSSH PRIVATE KEY", b"BEGIN RSA PRIVATE", b"BEGIN EC PRIVATE")


class CmdlineWatcher:
    """Collects the command lines of a process and its descendants while it runs."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    @staticmethod
    def _children() -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
        return tree

    def _poll(self, root: int) -> None:
        tree = self._children()
        todo = [root]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
            todo += tree.get(pid, [])

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                self._poll(proc.pid)
                time.sleep(0.005)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            done.set()
            t.join(timeout=5)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _key_bodies(path: Path) -> list[bytes]:
    """The base64 body of a PEM/OpenSSH private key, whole and line by line (long lines)."""
    lines = [
        ln.strip()
        for ln in path.read_bytes().splitlines()
        if ln.strip() and not ln.startswith(b"-----")
    ]
    return [b"".join(lines)] + [ln for ln in lines if len(ln) >= 40]


@pytest.fixture
def round_trip(tmp_path: Path) -> Iterator[tuple[World, list[tuple[str, bytes]], list[bytes]]]:
    world = World(tmp_path, devices=2)
    key_pass = "kp-" + secrets.token_hex(12)
    sign_pass = "sp-" + secrets.token_hex(12)
    packer = write_encrypted_key(tmp_path / "ssh", "packer-enc", passphrase=sign_pass.encode())
    packer_trust = tmp_path / "packer_allowed_signers"
    packer_trust.write_text(
        allowed_signers_line("operator@example.org", packer.public.read_text().strip()) + "\n"
    )
    art = single_file_artifact(
        tmp_path / "fw-2.mender",
        name="fw-2",
        dest_dir=Path("/etc/plant"),
        content=b"speed=2\n",
        key=None,
        device_types=(DEVICE_TYPE,),
    )
    roots: dict[str, dict[str, object]] = {}
    for i in range(2):
        roots[f"pump-{i:03d}"] = {"method": "file", "path": str(tmp_path / f"dev-{i}")}
        (tmp_path / f"dev-{i}").mkdir()
    devices = write_devices_file(tmp_path / "devices.toml", roots, site="plant-north")
    watcher = CmdlineWatcher()
    outputs: list[tuple[str, bytes]] = []
    site = str(world.site_file)
    with running_server(world.sim) as url:
        env = {
            **os.environ,
            "MENDER_SERVER_URL": url,
            "MENDER_API_TOKEN": world.sim.management_token,
            "MENDER_TENANT_TOKEN": "",
            "GAPFERRY_STATE": str(world.state),
            "GAPFERRY_KEY_PASSPHRASE": key_pass,
            "GAPFERRY_SIGN_PASSPHRASE": sign_pass,
        }
        isolated_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MENDER_", "GAPFERRY_"))
        }
        steps: list[tuple[list[str], dict[str, str]]] = [
            (["device", "keygen", "--site", site, "--algorithm", "ed25519", "--encrypt"], env),
            (["device", "preauth", "--site", site], env),
            (["device", "auth", "--site", site], env),
            (["release", "upload", str(art)], env),
            (["release", "deploy", "--site", site, "--artifact-name", "fw-2"], env),
            (
                ["pack", "--site", site, "--to", str(world.media), "--sign", str(packer.private)],
                env,
            ),
            (
                [
                    "apply",
                    str(world.media),
                    "--trust",
                    str(packer_trust),
                    "--devices",
                    str(devices),
                    "--state",
                    str(tmp_path / "applier.db"),
                    "--sign",
                    str(world.applier_key.private),
                ],
                isolated_env,
            ),
            (["ingest", str(world.media), "--trust", str(world.appliers)], env),
            (["status", "--json"], env),
        ]
        for args, e in steps:
            done = watcher.run(gapferry_argv(*args), e)
            outputs.append((f"{args[0]} {args[1]} stdout", done.stdout))
            outputs.append((f"{args[0]} {args[1]} stderr", done.stderr))
            assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    statuses = sorted(s for _, _, s in world.status_puts())
    assert statuses.count("success") == 2, statuses
    for i in range(2):
        assert (tmp_path / f"dev-{i}" / "etc" / "plant" / "app.conf").read_bytes() == b"speed=2\n"

    needles: list[bytes] = [
        world.sim.management_token.encode(),
        key_pass.encode(),
        sign_pass.encode(),
        *_MARKERS,
    ]
    keyfiles = [packer.private, world.applier_key.private, world.packer_key.private]
    keyfiles += [
        p for p in (world.state / "keys").rglob("*") if p.is_file() and "pub" not in p.name
    ]
    assert len(keyfiles) >= 5  # two device keys at least
    device_keys = [k for k in keyfiles if (world.state / "keys") in k.parents]
    assert device_keys
    for k in device_keys:  # the key store gapferry wrote: owner-only (TEAM.md)
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, (k, oct(k.stat().st_mode))
        assert b"ENCRYPTED" in k.read_bytes() or b"aes256-ctr" in k.read_bytes(), k
    for k in keyfiles:
        needles += _key_bodies(k)
    outputs += [(f"cmdline {c[:80]!r}", c) for c in sorted(watcher.seen)]
    yield world, outputs, needles
    world.close()


def test_attack_no_secret_in_anything_a_round_trip_writes(
    round_trip: tuple[World, list[tuple[str, bytes]], list[bytes]], tmp_path: Path
) -> None:
    world, outputs, needles = round_trip
    written: list[Path] = [p for p in world.media.rglob("*") if p.is_file()]
    written += [
        p for p in world.state.rglob("*") if p.is_file() and (world.state / "keys") not in p.parents
    ]
    written += [p for p in tmp_path.glob("applier.db*") if p.is_file()]
    assert any(p.name == "ledger.sqlite" for p in written)
    assert any(p.name.startswith("result-") for p in world.media.glob("gapferry/*"))
    corpus = outputs + [(str(p.relative_to(tmp_path)), p.read_bytes()) for p in written]
    assert len([c for c in corpus if c[0].startswith("cmdline")]) >= 9
    found = []
    for where, data in corpus:
        for n in needles:
            if n in data:
                found.append(f"{where}: {n[:24]!r}...")
        for m in _JWT.finditer(data):
            found.append(f"{where}: JWT {m.group(0)[:24]!r}...")
    assert found == []
