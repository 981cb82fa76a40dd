"""Attacks on ingest: hostile result bundles on the returning medium (issue 10, practice 10).

One named test per attack. Each packs a real transfer bundle for one device with the Mender
stand-in (strict mode), writes a result bundle as the applier would, turns it hostile, ingests
it, and asserts the exact error AND that nothing moved: the stand-in saw no status, log or
inventory call during the ingest, and the ledger's tables are unchanged (the journal, an
append-only record of commands, is left out).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from gapferry.common.bundle.canonical import manifest_sha256, render_sha256sums
from gapferry.common.bundle.layout import bundle_dir_name, marker_bytes, namespace_for
from gapferry.common.bundle.model import FileEntry
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import load_signer
from gapferry.connected.ingest import IngestReport
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.sshkeys import generate_key

_TABLES = ("devices", "artifacts", "deployments", "bundles", "bundle_items", "results", "outbox")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def ledger_rows(world: World) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(world.state / "ledger.sqlite")
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in _TABLES}  # noqa: S608
    finally:
        db.close()


def reports_in(world: World, since: int) -> list[str]:
    """Status, log and inventory calls the stand-in received after request number `since`."""
    out = []
    for r in world.sim.requests[since:]:
        if r.path.endswith("/status") or r.path.endswith("/log") or "/inventory/" in r.path:
            out.append(f"{r.method} {r.path}")
    return out


class Returned:
    """A world with one packed, issued transfer bundle and its (honest) result bundle."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.dep_id = world.release()
        report = world.pack()
        assert report.bundle_path is not None, report
        self.transfer = report.bundle_path
        self.result = world.write_result(report.bundle_path)

    def edit(self, change: Callable[[dict[str, Any]], None], *, rename: bool = False) -> None:
        """Change the result manifest and sign it again with the TRUSTED applier key."""
        doc = json.loads((self.result / "manifest.json").read_bytes())
        change(doc)
        raw = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
        for old in self.result.glob("manifest.json.sig*"):
            old.unlink()
        (self.result / "manifest.json").write_bytes(raw)
        signer = load_signer(str(self.world.applier_key.private))
        sig = signer.sign_sshsig(raw, namespace_for("result"))
        (self.result / "manifest.json.sig").write_bytes(sig)
        (self.result / "COMPLETE").write_bytes(marker_bytes(manifest_sha256(raw)))
        if rename:
            name = bundle_dir_name(
                "result", site=doc["site"], sequence=doc["sequence"], bundle_id=doc["result_id"]
            )
            self.result = self.result.rename(self.result.with_name(name))

    def set_log(self, doc: dict[str, Any], packed: bytes, *, size: int, lines: int) -> None:
        """Replace device 0's log by `packed`, declared as `size` bytes and `lines` lines."""
        logs = self.result / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        sha = hashlib.sha256(packed).hexdigest()
        path = f"logs/{sha}.log.zst"
        (self.result / path).write_bytes(packed)
        doc["devices"][0]["log"] = {
            "path": path,
            "sha256": sha,
            "size": len(packed),
            "decompressed_size": size,
            "lines": lines,
        }
        files = [FileEntry(path=path, size=len(packed), sha256=sha)]
        sums = render_sha256sums(files)
        (self.result / "SHA256SUMS").write_bytes(sums)
        doc["files"] = [{"path": path, "size": len(packed), "sha256": sha}]
        doc["checksums_sha256"] = hashlib.sha256(sums).hexdigest()

    def ingest(self) -> tuple[IngestReport, dict[str, list[tuple[Any, ...]]], int]:
        before_rows = ledger_rows(self.world)
        since = len(self.world.sim.requests)
        report = self.world.ingest()
        return report, before_rows, since


@pytest.fixture
def returned(world: World) -> Returned:
    return Returned(world)


def assert_rejected(r: Returned, ingested: tuple[IngestReport, Any, int], detail: str) -> None:
    """Rejected with `detail` (``code: message`` prefix), nothing reported, ledger unchanged."""
    report, before_rows, since = ingested
    assert not report.ok
    [row] = report.rows
    assert row.action == "rejected", row
    assert row.detail.startswith(detail), row.detail
    assert reports_in(r.world, since) == []
    assert len(r.world.sim.requests) == since  # not even a login
    assert ledger_rows(r.world) == before_rows
    assert r.world.sim.strict_violations == []


def test_attack_forged_result_signed_by_an_untrusted_key(
    returned: Returned, tmp_path: Path
) -> None:
    shutil.rmtree(returned.result)
    stranger = generate_key(tmp_path, "stranger")
    returned.result = returned.world.write_result(returned.transfer, signer_key=stranger.private)
    assert_rejected(
        returned, returned.ingest(), "untrusted-signer: signature #0 does not verify: #0 untrusted"
    )


def test_attack_result_signed_in_the_transfer_namespace(returned: Returned) -> None:
    """The applier's key signing in the transfer namespace (e.g. a signature lifted from
    another context) must not pass as a result signature."""
    raw = (returned.result / "manifest.json").read_bytes()
    signer = load_signer(str(returned.world.applier_key.private))
    sig = signer.sign_sshsig(raw, namespace_for("transfer"))
    (returned.result / "manifest.json.sig").write_bytes(sig)
    assert_rejected(returned, returned.ingest(), "wrong-namespace: signature #0 does not verify")


def test_attack_result_for_a_bundle_this_ledger_never_issued(returned: Returned) -> None:
    other = str(uuid.uuid4())

    def change(m: dict[str, Any]) -> None:
        m["receipt"]["transfer_bundle_id"] = other

    returned.edit(change)
    result_id = json.loads((returned.result / "manifest.json").read_bytes())["result_id"]
    assert_rejected(
        returned,
        returned.ingest(),
        f"unknown-transfer-bundle: result {result_id} answers transfer bundle {other}, which "
        "this ledger did not issue",
    )


def test_attack_result_with_a_forged_receipt_digest(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["receipt"]["transfer_manifest_sha256"] = "0" * 64

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "receipt-mismatch: result ")


def test_attack_result_for_another_site(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["site"] = "plant-south"

    returned.edit(change, rename=True)
    assert_rejected(
        returned,
        returned.ingest(),
        "site-mismatch: result for site 'plant-south', bundle was for 'plant-north'",
    )


def test_attack_result_claiming_a_deployment_that_was_not_carried(returned: Returned) -> None:
    other = str(uuid.uuid4())

    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["deployment_id"] = other

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        f"deployment-not-in-bundle: result {json.loads((returned.result / 'manifest.json').read_bytes())['result_id']}"
        f" reports deployment {other} for pump-000, which bundle #1 did not carry",
    )


def test_attack_result_claiming_a_device_that_was_not_carried(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["name"] = "pump-999"

    returned.edit(change)
    report = returned.ingest()
    assert_rejected(returned, report, "device-mismatch: result ")
    assert "names device pump-999 with Mender ID " in report[0].rows[0].detail
    assert report[0].rows[0].detail.endswith("the ledger knows no such device")


def test_attack_replayed_result_on_a_fresh_medium(returned: Returned) -> None:
    """The same result bundle brought back again after it was ingested: nothing is sent twice."""
    first = returned.world.ingest()
    assert first.ok, first
    copy = returned.world.tmp / "copy"
    shutil.copytree(returned.result, copy)
    shutil.rmtree(returned.world.media / "gapferry")
    (returned.world.media / "gapferry").mkdir()
    shutil.copytree(copy, returned.result)
    report, before_rows, since = returned.ingest()
    assert report.ok
    assert [r.action for r in report.rows] == ["already-ingested"]
    assert reports_in(returned.world, since) == []
    assert ledger_rows(returned.world) == before_rows
    puts = [s for d, _, s in returned.world.status_puts() if d == returned.dep_id]
    assert puts == ["installing", "success"]


def test_attack_second_result_for_the_same_bundle_cannot_report_again(returned: Returned) -> None:
    """After success was reported, a NEW validly signed result (another id) claiming failure
    for the same deployment is recorded but reports nothing."""
    first = returned.world.ingest()
    assert first.ok, first
    shutil.rmtree(returned.result)
    returned.result = returned.world.write_result(returned.transfer, outcome="failure")
    report, _, since = returned.ingest()
    assert [r.action for r in report.rows] == ["already-reported"]
    assert reports_in(returned.world, since) == []
    puts = [s for d, _, s in returned.world.status_puts() if d == returned.dep_id]
    assert puts == ["installing", "success"]


def test_attack_inventory_array_of_mixed_types(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": "ipv4", "value": ["10.0.0.5", 5]}]

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        "inconsistent-manifest: manifest is inconsistent: device 'pump-000' attribute 'ipv4': an "
        "array must hold only strings or only numbers (Mender's rule)",
    )


def test_attack_inventory_nested_object(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": "cfg", "value": {"a": 1}}]

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "malformed-manifest: ")


def test_attack_inventory_boolean_value(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": "ok", "value": True}]

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "malformed-manifest: ")


def test_attack_inventory_too_many_attributes(returned: Returned) -> None:
    n = DEFAULT_LIMITS.inventory_attributes + 1

    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": f"a{i}", "value": i} for i in range(n)]

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        "inconsistent-manifest: manifest is inconsistent: device 'pump-000' reports more than "
        f"{DEFAULT_LIMITS.inventory_attributes}",
    )


def test_attack_inventory_value_too_large(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        big = "x" * (DEFAULT_LIMITS.inventory_value_bytes + 1)
        m["devices"][0]["inventory"] = [{"name": "blob", "value": big}]

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        "inconsistent-manifest: manifest is inconsistent: device 'pump-000' attribute 'blob' is "
        "too large",
    )


def test_attack_inventory_duplicated_attribute(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": "os", "value": "a"}, {"name": "os", "value": "b"}]

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        "inconsistent-manifest: manifest is inconsistent: device 'pump-000' inventory attribute "
        "'os' appears more than once",
    )


def test_attack_oversized_log_declared(returned: Returned) -> None:
    limit = DEFAULT_LIMITS.log_bytes
    line = b'{"level":"info","message":"x","timestamp":"2026-01-01T00:00:00Z"}\n'
    plain = line * (limit // len(line) + 1)
    packed = zstandard.ZstdCompressor().compress(plain)

    def change(m: dict[str, Any]) -> None:
        returned.set_log(m, packed, size=len(plain), lines=plain.count(b"\n"))

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        f"log-too-large: device 'pump-000': log declares {len(plain)} bytes, more than the limit "
        f"of {limit}",
    )


def test_attack_zstd_bomb_log(returned: Returned) -> None:
    """A small log declaring 100 bytes that inflates to 512 MiB: stopped at the declared size."""
    packed = zstandard.ZstdCompressor(level=19).compress(b"\n" * (512 << 20))
    assert len(packed) < 1 << 20

    def change(m: dict[str, Any]) -> None:
        returned.set_log(m, packed, size=100, lines=100)

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "zstd-bomb: log logs/")


def test_attack_log_with_more_lines_than_declared(returned: Returned) -> None:
    line = b'{"level":"info","message":"x","timestamp":"2026-01-01T00:00:00Z"}\n'
    plain = line * 3
    packed = zstandard.ZstdCompressor().compress(plain)

    def change(m: dict[str, Any]) -> None:
        returned.set_log(m, packed, size=len(plain), lines=2)

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "bad-log: log logs/")


def test_attack_result_that_contradicts_itself(returned: Returned) -> None:
    """Outcome success, but the last step says failure."""

    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["steps"][-1]["status"] = "failure"

    returned.edit(change)
    assert_rejected(
        returned,
        returned.ingest(),
        "inconsistent-manifest: manifest is inconsistent: device 'pump-000': last step does not "
        "match 'success'",
    )


def test_attack_truncated_result_bundle(returned: Returned) -> None:
    (returned.result / "COMPLETE").unlink()
    assert_rejected(returned, returned.ingest(), "incomplete: ")


def test_attack_result_claims_success_with_another_artifact_name(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["artifact_name_after"] = "evil-fw"

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "artifact-mismatch: ")


def test_attack_result_inventory_overrides_the_artifact_name(returned: Returned) -> None:
    def change(m: dict[str, Any]) -> None:
        m["devices"][0]["inventory"] = [{"name": "artifact_name", "value": "evil-fw"}]

    returned.edit(change)
    assert_rejected(returned, returned.ingest(), "artifact-mismatch: ")
