"""Attacks on the applier: hostile transfer bundles on the medium (issue 10, STYLE practice 10).

One named test per attack. Each runs the real `gapferry apply` command (in-process) against a
file-placement device that already received a legitimate bundle (sequence 1), then asserts the
exact error AND that nothing moved:

- no file placed: the device folder is unchanged byte for byte (`tree`);
- no install started: an installer spy wrapped around the ``file`` installer saw no call;
- the applier's replay record is not advanced: its rows are unchanged (`record_rows`);
- no result bundle was written on the hostile medium.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gapferry.common.bundle import open_bundle
from gapferry.common.bundle.canonical import manifest_sha256
from gapferry.common.bundle.layout import marker_bytes, namespace_for, signature_name
from gapferry.common.limits import Limits
from gapferry.common.signers import Signer, load_signer
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.artifacts import mender_artifact_write
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    make_transfer,
    outcome_json,
    run_apply,
    single_file_artifact,
    write_devices_file,
)
from gapferry.isolated.apply import BundleRejected, apply_bundle
from gapferry.isolated.devices import load_devices_file
from gapferry.isolated.installers.base import InstallJob
from gapferry.isolated.installers.file_placement import FileInstaller
from gapferry.isolated.record import AppliedRecord
from gapferry.isolated.report import DeviceReport

pytestmark = pytest.mark.real_tools

DEVICE = "hmi-1"
EXIT_REJECTED = 3


# --- what "nothing moved" means ------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under `root`: relative path -> (mode, content or link target)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = (st.st_mode, str(p.readlink()))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (st.st_mode, p.read_bytes())
            else:
                out[rel] = (st.st_mode, b"")
    return out


def record_rows(state: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The applier record's rows (bundles, devices), without the run timestamps."""
    if not state.exists():
        return [], []
    db = sqlite3.connect(state)
    try:
        bundles = db.execute(
            "SELECT bundle_id, site, sequence, manifest_sha256 FROM bundles ORDER BY bundle_id"
        ).fetchall()
        devices = db.execute(
            "SELECT bundle_id, name, state, report FROM devices ORDER BY bundle_id, name"
        ).fetchall()
    finally:
        db.close()
    return bundles, devices


@dataclass
class Scene:
    """A laptop that applied sequence 1 to one file-placement device, and a fresh medium."""

    tmp: Path
    keys: Keys
    root: Path
    devices: Path
    state: Path
    media: Path
    app1: Path
    app2: Path
    installs: list[str]

    def transfer(self, *, sequence: int = 2, artifact: Path | None = None, **kw: Any) -> Path:
        """A legitimate transfer bundle on the hostile medium (to be tampered with)."""
        art = artifact or self.app2
        return make_transfer(
            self.media,
            self.keys,
            [DevicePlan(name=DEVICE, artifact=art, artifact_name=art.stem)],
            sequence=sequence,
            **kw,
        )

    def apply(self, target: Path, *extra: str) -> dict[str, Any]:
        r = run_apply(target, self.keys, self.devices, self.state, *extra)
        doc = outcome_json(r)
        doc["exit_code"] = r.exit_code
        return doc

    def snapshot(self) -> tuple[object, ...]:
        return (tree(self.root), record_rows(self.state), len(self.installs))


def assert_rejected(scene: Scene, before: tuple[object, ...], doc: dict[str, Any]) -> None:
    """Exit 3 and nothing moved."""
    assert doc["exit_code"] == EXIT_REJECTED, doc
    assert doc["ok"] is False
    assert scene.snapshot() == before
    assert scene.installs == []
    assert not list(scene.media.glob("gapferry/result-*"))


def rejected(doc: dict[str, Any]) -> tuple[str, str]:
    err = doc["error"]
    assert isinstance(err, dict)
    return str(err["code"]), str(err["message"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> tuple[Path, Path]:
    """Two validly signed single-file artifacts of the same size (no compression)."""
    d = tmp_path_factory.mktemp("attack-artifacts")
    made = []
    for v in ("1", "2"):
        made.append(
            single_file_artifact(
                d / f"app-{v}.mender",
                name=f"app-{v}",
                dest_dir=Path("/etc/plant"),
                content=f"speed={v}\n".encode(),
                key=keys.artifact,
                extra_args=["--compression", "none"],
            )
        )
    return made[0], made[1]


@pytest.fixture
def scene(
    tmp_path: Path,
    keys: Keys,
    artifacts: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Scene:
    root = tmp_path / "device"
    (root / "etc").mkdir(parents=True)
    devices = write_devices_file(
        tmp_path / "devices.toml",
        {DEVICE: {"method": "file", "path": str(root)}},
        verify_key=keys.artifact.public,
    )
    app1, app2 = artifacts
    first = tmp_path / "first-medium"
    make_transfer(first, keys, [DevicePlan(name=DEVICE, artifact=app1, artifact_name="app-1")])
    r = run_apply(first, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 0, r.output
    assert (root / "etc" / "plant" / "app.conf").read_bytes() == b"speed=1\n"

    installs: list[str] = []
    real = FileInstaller.install

    def spy(self: FileInstaller, job: InstallJob) -> DeviceReport:
        installs.append(job.device.name)
        return real(self, job)

    monkeypatch.setattr(FileInstaller, "install", spy)
    return Scene(
        tmp=tmp_path,
        keys=keys,
        root=root,
        devices=devices,
        state=tmp_path / "state.db",
        media=tmp_path / "hostile-medium",
        app1=app1,
        app2=app2,
        installs=installs,
    )


# --- tampering helpers ----------------------------------------------------------------------------


def canonical(doc: object) -> bytes:
    return (
        json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode()


def resign(bundle: Path, raw: bytes, signers: list[Signer], *, kind: str = "transfer") -> None:
    """Replace manifest, signatures and marker, as a hostile writer holding `signers` could."""
    for old in bundle.glob("manifest.json.sig*"):
        old.unlink()
    (bundle / "manifest.json").write_bytes(raw)
    ns = namespace_for("transfer" if kind == "transfer" else "result")
    for i, s in enumerate(signers, start=1):
        (bundle / signature_name(i)).write_bytes(s.sign_sshsig(raw, ns))
    (bundle / "COMPLETE").write_bytes(marker_bytes(manifest_sha256(raw)))


def packer(scene: Scene) -> Signer:
    return load_signer(str(scene.keys.packer.private))


def edit_manifest(scene: Scene, bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and sign it again with the TRUSTED packer key (a buggy or hostile
    packer, or a stolen key: the checks after the signature must still hold)."""
    doc = json.loads((bundle / "manifest.json").read_bytes())
    change(doc)
    resign(bundle, canonical(doc), [packer(scene)])


def artifact_file(bundle: Path) -> Path:
    (art,) = (bundle / "artifacts").iterdir()
    return art


# --- arbitrary software -------------------------------------------------------------------------


def test_attack_unsigned_bundle(scene: Scene) -> None:
    bundle = scene.transfer()
    for sig in bundle.glob("manifest.json.sig*"):
        sig.unlink()
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == ("unsigned", "expected at least one signature, found none")
    assert_rejected(scene, before, doc)


def test_attack_bundle_signed_by_untrusted_key(scene: Scene) -> None:
    bundle = scene.transfer(signer=scene.keys.stranger)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "untrusted-signer"
    assert message.startswith("signature #0 does not verify:")
    assert_rejected(scene, before, doc)


def test_attack_bundle_signed_in_the_result_namespace(scene: Scene) -> None:
    """A trusted key's signature made for a result bundle must not admit a transfer bundle."""
    bundle = scene.transfer()
    resign(bundle, (bundle / "manifest.json").read_bytes(), [packer(scene)], kind="result")
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "wrong-namespace"
    assert message.startswith("signature #0 does not verify:")
    assert_rejected(scene, before, doc)


def test_attack_bundle_below_threshold(scene: Scene) -> None:
    bundle = scene.transfer()
    before = scene.snapshot()
    doc = scene.apply(bundle, "--threshold", "2")
    code, message = rejected(doc)
    assert code == "below-threshold"
    assert message.startswith("expected 2 distinct trusted keys, found 1 of 2: #0 trusted:")
    assert_rejected(scene, before, doc)


def test_attack_same_key_twice_does_not_meet_a_threshold_of_two(scene: Scene) -> None:
    bundle = scene.transfer()
    raw = (bundle / "manifest.json").read_bytes()
    resign(bundle, raw, [packer(scene), packer(scene)])
    before = scene.snapshot()
    doc = scene.apply(bundle, "--threshold", "2")
    assert rejected(doc)[0] == "below-threshold"
    assert_rejected(scene, before, doc)


# --- rollback, replay, freeze, wrong site ---------------------------------------------------------


def test_attack_rollback_to_an_older_sequence(scene: Scene) -> None:
    newer = scene.transfer(sequence=5)
    assert scene.apply(newer)["exit_code"] == 0
    shutil.rmtree(scene.media)
    scene.installs.clear()
    older = scene.transfer(sequence=4, artifact=scene.app1)
    before = scene.snapshot()
    doc = scene.apply(older)
    code, message = rejected(doc)
    assert code == "replayed"
    assert message == (
        "transfer bundle sequence 4 for site 'plant-a' is not newer than the last one applied"
        " (5): an old bundle replayed"
    )
    assert_rejected(scene, before, doc)


def test_attack_replay_of_the_applied_bundle_installs_nothing_again(scene: Scene) -> None:
    """The very same bundle again is a resume: finished devices are not touched twice."""
    bundle = scene.transfer()
    assert scene.apply(bundle)["exit_code"] == 0
    assert scene.installs == [DEVICE]
    scene.installs.clear()
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert doc["exit_code"] == 0, doc
    assert doc["resumed"] is True
    assert [p["action"] for p in doc["plan"]] == ["done"]
    assert scene.snapshot() == before
    assert scene.installs == []


def test_attack_replay_of_an_older_applied_bundle_after_a_newer_one(scene: Scene) -> None:
    """Sequence 1 (applied in the fixture) comes back after sequence 2: a rollback, refused."""
    newer = scene.transfer(sequence=2)
    assert scene.apply(newer)["exit_code"] == 0
    shutil.rmtree(scene.media)
    scene.installs.clear()
    first = next((scene.tmp / "first-medium" / "gapferry").glob("transfer-*"))
    before = scene.snapshot()
    doc = scene.apply(first)
    # Known id, same bytes: the record treats it as a resume of sequence 1, not a rollback;
    # its device has a final report, so nothing is installed and the record keeps sequence 2.
    assert scene.snapshot() == before
    assert scene.installs == []
    assert doc["exit_code"] == 0, doc
    assert doc["resumed"] is True


def test_attack_reused_bundle_id_with_other_content(scene: Scene) -> None:
    """The packer key signs new content under the id of an already applied bundle."""
    first = next((scene.tmp / "first-medium" / "gapferry").glob("transfer-*"))
    bundle = scene.media / "gapferry" / first.name
    shutil.copytree(first, bundle)
    edit_manifest(scene, bundle, lambda m: m.__setitem__("expires", "2099-01-01T00:00:00Z"))
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "bundle-id-reused"
    assert message.startswith("a different transfer bundle with the same id")
    assert_rejected(scene, before, doc)


def test_attack_freeze_expired_bundle(scene: Scene) -> None:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    bundle = scene.transfer(created=created, expires=created + timedelta(days=7))
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "expired"
    assert message.startswith("this transfer bundle expired at ")
    assert_rejected(scene, before, doc)


def test_attack_bundle_for_another_site_renamed_for_this_one(scene: Scene) -> None:
    """The folder name is not signed: a plant-b bundle renamed transfer-plant-a-... is refused."""
    bundle = scene.transfer(site="plant-b")
    renamed = bundle.with_name(bundle.name.replace("plant-b", "plant-a"))
    bundle.rename(renamed)
    before = scene.snapshot()
    doc = scene.apply(scene.media)
    assert rejected(doc) == (
        "name-mismatch",
        f"the bundle folder is named {renamed.name!r} but its manifest says {bundle.name!r}",
    )
    assert_rejected(scene, before, doc)


def test_attack_bundle_for_another_site(scene: Scene) -> None:
    bundle = scene.transfer(site="plant-b")
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "wrong-site",
        "the bundle is for site 'plant-b', this applier serves 'plant-a'",
    )
    assert_rejected(scene, before, doc)


# --- mix and match ------------------------------------------------------------------------------


def test_attack_artifact_swapped_for_a_validly_signed_older_one(scene: Scene) -> None:
    """app-2's file replaced by app-1's bytes (same size, Mender signature valid): the bundle's
    sha256 catches it before anything is placed."""
    bundle = scene.transfer()
    target = artifact_file(bundle)
    assert scene.app1.stat().st_size == target.stat().st_size
    target.chmod(0o644)
    target.write_bytes(scene.app1.read_bytes())
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "digest-mismatch"
    assert hashlib.sha256(scene.app1.read_bytes()).hexdigest() in message
    assert_rejected(scene, before, doc)


# --- endless data --------------------------------------------------------------------------------


def test_attack_oversized_manifest(scene: Scene) -> None:
    bundle = scene.transfer()
    limit = Limits().manifest_bytes
    with (bundle / "manifest.json").open("ab") as f:
        f.truncate(limit + 1)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "manifest-too-large"
    assert message == f"manifest.json is larger than the limit of {limit} bytes"
    assert_rejected(scene, before, doc)


def test_attack_oversized_signature_file(scene: Scene) -> None:
    bundle = scene.transfer()
    limit = Limits().signature_bytes
    with (bundle / "manifest.json.sig").open("ab") as f:
        f.truncate(limit + 1)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "bad-signature"
    assert message == f"manifest.json.sig is larger than the limit of {limit} bytes"
    assert_rejected(scene, before, doc)


def test_attack_compression_bomb_artifact_is_refused_before_placing(scene: Scene) -> None:
    """A (validly packed) artifact whose xz payload inflates far beyond the limits: the
    device fails before anything is sent; the medium's bundle itself was genuine, so the
    failure is recorded and reported (ADR 0053), but nothing is placed."""
    payload = scene.tmp / "bomb"
    payload.mkdir()
    with (payload / "app.conf").open("wb") as f:
        f.truncate(64 << 20)
    (payload / "dest_dir").write_text("/etc/plant\n")
    (payload / "filename").write_text("app.conf\n")
    (payload / "permissions").write_text("644\n")
    bomb = mender_artifact_write(
        scene.tmp / "bomb.mender",
        name="bomb",
        payload_type="single-file",
        files=[
            payload / "app.conf",
            payload / "dest_dir",
            payload / "filename",
            payload / "permissions",
        ],
        key=scene.keys.artifact,
        compression="lzma",  # Mender 3.x artifacts carry no zstd; the zstd bomb is a result log
    )
    assert bomb.stat().st_size < 1 << 20
    bundle = scene.transfer(artifact=bomb)
    before_tree = tree(scene.root)
    small = Limits(artifact_decompressed_bytes=8 << 20, payload_decompressed_bytes=8 << 20)
    with AppliedRecord(scene.state) as record:
        result = apply_bundle(
            bundle,
            policy=TrustPolicy.from_file(scene.keys.trust),
            devices=load_devices_file(scene.devices),
            record=record,
            signers=[load_signer(str(scene.keys.technician.private))],
            now=datetime.now(UTC),
            limits=small,
            applier_name="tech",
        )
    [report] = result.reports
    assert (report.outcome, report.code) == ("failure", "artifact-too-large")
    assert report.reason is not None
    assert report.reason.startswith("refused before sending anything:")
    assert [p.action for p in result.plan] == ["refuse"]
    assert tree(scene.root) == before_tree
    assert scene.installs == []


def test_attack_huge_check_output_keeps_the_log_bounded(scene: Scene) -> None:
    """A device (here its check command) that talks endlessly: one 20 MB line and 100,000 short
    ones. The result log stays within the limits (long lines cut, oldest lines dropped) and keeps
    the newest output, and the result bundle still verifies."""
    devices = write_devices_file(
        scene.tmp / "chatty.toml",
        {
            DEVICE: {
                "method": "file",
                "path": str(scene.root),
                "check_command": "head -c 20000000 /dev/zero | tr '\\0' 'x'; echo; seq 1 100000",
            }
        },
        verify_key=scene.keys.artifact.public,
    )
    bundle = scene.transfer()
    r = run_apply(bundle, scene.keys, devices, scene.state)
    assert r.exit_code == 0, r.output[:2000]
    (result,) = scene.media.glob("gapferry/result-*")
    limits = Limits()
    opened = open_bundle(
        result,
        policy=TrustPolicy.from_file(scene.keys.trust),
        now=datetime.now(UTC) + timedelta(seconds=5),
        limits=limits,
    )
    manifest = json.loads((result / "manifest.json").read_bytes())
    [d] = manifest["devices"]
    assert d["outcome"] == "success"
    log = d["log"]
    assert log is not None
    assert 0 < log["decompressed_size"] <= limits.log_bytes
    assert 0 < log["lines"] <= limits.log_lines
    assert (result / log["path"]).stat().st_size == log["size"]
    assert sum(p.stat().st_size for p in (result / "logs").iterdir()) <= limits.log_bytes
    messages = [line.message for line in opened.read_log(DEVICE)]
    assert len(messages) == log["lines"]
    assert "100000" in messages  # the newest output is kept, the oldest dropped
    assert "1" not in messages
    assert all(len(m.encode()) <= limits.log_line_bytes for m in messages)


# --- paths, links, devices -----------------------------------------------------------------------


def test_attack_manifest_lists_an_escaping_path(scene: Scene) -> None:
    bundle = scene.transfer()

    def escape(m: dict[str, Any]) -> None:
        m["files"][0]["path"] = "../../etc/passwd"

    edit_manifest(scene, bundle, escape)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert (code, message) == (
        "bad-path",
        "manifest lists the file '../../etc/passwd': refusing path '..': empty, '.' or '..'"
        " component",
    )
    assert_rejected(scene, before, doc)


def test_attack_artifact_is_a_symlink(scene: Scene) -> None:
    bundle = scene.transfer()
    art = artifact_file(bundle)
    outside = scene.tmp / "outside.mender"
    shutil.copyfile(art, outside)
    art.unlink()
    art.symlink_to(outside)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "unsafe-file",
        f"refusing 'artifacts/{art.name}': is a symbolic link",
    )
    assert_rejected(scene, before, doc)


def test_attack_manifest_is_a_symlink(scene: Scene) -> None:
    bundle = scene.transfer()
    outside = scene.tmp / "outside.json"
    shutil.copyfile(bundle / "manifest.json", outside)
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(outside)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == ("unsafe-file", "refusing 'manifest.json': is a symbolic link")
    assert_rejected(scene, before, doc)


def test_attack_artifact_is_a_hard_link(scene: Scene) -> None:
    bundle = scene.transfer()
    art = artifact_file(bundle)
    os.link(art, scene.tmp / "other-name")
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "unsafe-file",
        f"refusing 'artifacts/{art.name}': has other hard links",
    )
    assert_rejected(scene, before, doc)


def test_attack_artifact_is_a_fifo(scene: Scene) -> None:
    """A FIFO would block a reader for ever: refused without opening it."""
    bundle = scene.transfer()
    art = artifact_file(bundle)
    art.unlink()
    os.mkfifo(art)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "unsafe-file",
        f"refusing 'artifacts/{art.name}': is not a regular file",
    )
    assert_rejected(scene, before, doc)


def test_attack_bundle_folder_is_a_symlink(scene: Scene) -> None:
    bundle = scene.transfer()
    real = scene.tmp / "elsewhere"
    bundle.rename(real)
    bundle.symlink_to(real)
    before = scene.snapshot()
    r = run_apply(scene.media, scene.keys, scene.devices, scene.state)
    assert r.exit_code == 2, r.output
    err = outcome_json(r)["error"]
    assert isinstance(err, dict)
    assert err["code"] == "no-bundle"
    assert scene.snapshot() == before
    assert scene.installs == []


def _payload_tar(scene: Scene, name: str, add: Callable[[tarfile.TarFile], None]) -> Path:
    payload = scene.tmp / f"{name}-payload"
    payload.mkdir()
    with tarfile.open(payload / "update.tar", "w") as t:
        add(t)
    (payload / "dest_dir").write_text("/etc/plant\n")
    return mender_artifact_write(
        scene.tmp / f"{name}.mender",
        name=name,
        payload_type="directory",
        files=[payload / "update.tar", payload / "dest_dir"],
        key=scene.keys.artifact,
    )


def _device_failed_unsafe(scene: Scene, artifact: Path) -> None:
    bundle = scene.transfer(artifact=artifact)
    before_tree = tree(scene.root)
    doc = scene.apply(bundle)
    assert doc["exit_code"] == 1, doc
    [d] = doc["devices"]
    assert (d["outcome"], d["code"]) == ("failure", "artifact-unsafe-path"), d
    assert str(d["reason"]).startswith("refused before placing anything:")
    assert tree(scene.root) == before_tree
    assert not (scene.tmp / "escape").exists()


def test_attack_payload_symlink_out_of_the_destination(scene: Scene) -> None:
    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../etc/passwd"
        t.addfile(info)

    _device_failed_unsafe(scene, _payload_tar(scene, "symlink", add))


def test_attack_payload_hard_link(scene: Scene) -> None:
    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("shadow")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/shadow"
        t.addfile(info)

    _device_failed_unsafe(scene, _payload_tar(scene, "hardlink", add))


def test_attack_payload_device_file(scene: Scene) -> None:
    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("mem")
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 1
        t.addfile(info)

    _device_failed_unsafe(scene, _payload_tar(scene, "chardev", add))


def test_attack_payload_absolute_path(scene: Scene) -> None:
    import io

    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("/etc/cron.d/evil")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))

    _device_failed_unsafe(scene, _payload_tar(scene, "absolute", add))


def test_attack_single_file_dest_dir_escapes(scene: Scene) -> None:
    art = single_file_artifact(
        scene.tmp / "dotdot.mender",
        name="dotdot",
        dest_dir=Path("/etc/../../escape"),
        content=b"evil\n",
        key=scene.keys.artifact,
    )
    _device_failed_unsafe(scene, art)


# --- truncated media -----------------------------------------------------------------------------


def test_attack_truncated_artifact(scene: Scene) -> None:
    bundle = scene.transfer()
    art = artifact_file(bundle)
    size = art.stat().st_size
    art.chmod(0o644)
    with art.open("r+b") as f:
        f.truncate(size // 2)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "truncated-file"
    assert message == f"artifacts/{art.name}: expected {size} bytes, found {size // 2} (truncated)"
    assert_rejected(scene, before, doc)


def test_attack_truncated_manifest(scene: Scene) -> None:
    bundle = scene.transfer()
    raw = (bundle / "manifest.json").read_bytes()
    (bundle / "manifest.json").write_bytes(raw[: len(raw) // 2])
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "bad-signature"
    assert message.startswith("signature #0 does not verify:")
    assert_rejected(scene, before, doc)


def test_attack_bundle_without_completion_marker(scene: Scene) -> None:
    bundle = scene.transfer()
    (bundle / "COMPLETE").unlink()
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "incomplete"
    assert message == f"{bundle.name} has no completion marker (COMPLETE)"
    assert_rejected(scene, before, doc)


# --- duplicated entries and self-contradiction ---------------------------------------------------


def test_attack_duplicated_device_entry(scene: Scene) -> None:
    bundle = scene.transfer()

    def dup(m: dict[str, Any]) -> None:
        m["devices"].append(dict(m["devices"][0]))

    edit_manifest(scene, bundle, dup)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "inconsistent-manifest",
        f"manifest is inconsistent: device name {DEVICE!r} appears more than once",
    )
    assert_rejected(scene, before, doc)


def test_attack_duplicated_file_entry(scene: Scene) -> None:
    bundle = scene.transfer()

    def dup(m: dict[str, Any]) -> None:
        m["files"].append(dict(m["files"][0]))

    edit_manifest(scene, bundle, dup)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "inconsistent-manifest"
    assert message.startswith("manifest is inconsistent: file path 'artifacts/")
    assert message.endswith("appears more than once")
    assert_rejected(scene, before, doc)


def test_attack_duplicated_json_key(scene: Scene) -> None:
    """``"site"`` twice: JSON readers disagree on which one counts (first or last). A signed
    manifest must mean one thing to every reader, so duplicate keys are refused."""
    bundle = scene.transfer()
    raw = (bundle / "manifest.json").read_bytes()
    hostile = raw.replace(b'"site":"plant-a"', b'"site":"plant-b","site":"plant-a"', 1)
    assert hostile != raw
    resign(bundle, hostile, [packer(scene)])
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "malformed-manifest",
        "manifest.json has the key 'site' more than once in one object",
    )
    assert_rejected(scene, before, doc)


def test_attack_device_artifact_reference_contradicts_the_entry(scene: Scene) -> None:
    bundle = scene.transfer()

    def lie(m: dict[str, Any]) -> None:
        m["devices"][0]["artifact"]["size"] += 1

    edit_manifest(scene, bundle, lie)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "inconsistent-manifest",
        f"manifest is inconsistent: device {DEVICE!r}: artifact reference differs from the entry",
    )
    assert_rejected(scene, before, doc)


def test_attack_artifact_entry_size_contradicts_its_file(scene: Scene) -> None:
    bundle = scene.transfer()

    def lie(m: dict[str, Any]) -> None:
        m["artifacts"][0]["size"] += 1
        m["devices"][0]["artifact"]["size"] += 1

    edit_manifest(scene, bundle, lie)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    code, message = rejected(doc)
    assert code == "inconsistent-manifest"
    assert message.startswith("manifest is inconsistent: the parts of artifact ")
    assert_rejected(scene, before, doc)


def test_attack_expires_before_created(scene: Scene) -> None:
    bundle = scene.transfer()

    def lie(m: dict[str, Any]) -> None:
        m["expires"] = m["created"]

    edit_manifest(scene, bundle, lie)
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "inconsistent-manifest",
        "manifest is inconsistent: expires is not after created",
    )
    assert_rejected(scene, before, doc)


def test_attack_checksum_list_contradicts_the_manifest(scene: Scene) -> None:
    bundle = scene.transfer()
    sums = bundle / "SHA256SUMS"
    sums.chmod(0o644)
    sums.write_bytes(sums.read_bytes().replace(b"artifacts/", b"artifacts/x", 1))
    before = scene.snapshot()
    doc = scene.apply(bundle)
    assert rejected(doc) == (
        "digest-mismatch",
        "SHA256SUMS: sha256 differs from the manifest's checksums_sha256",
    )
    assert_rejected(scene, before, doc)


def test_library_rejection_is_bundle_rejected(scene: Scene) -> None:
    """The library entry raises `BundleRejected` with the code of the first failed check."""
    bundle = scene.transfer(signer=scene.keys.stranger)
    before = scene.snapshot()
    with AppliedRecord(scene.state) as record, pytest.raises(BundleRejected) as e:
        apply_bundle(
            bundle,
            policy=TrustPolicy.from_file(scene.keys.trust),
            devices=load_devices_file(scene.devices),
            record=record,
            signers=[],
            now=datetime.now(UTC),
            limits=Limits(),
            applier_name="tech",
        )
    assert e.value.code == "untrusted-signer"
    assert scene.snapshot() == before
