"""Bundle-level checks of ``gapferry apply``: trust, threshold, expiry, clock, site, replay and
resume, dry run, selection, usage. A rejected bundle installs nothing and writes no result."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from gapferry.common.bundle import find_bundles, utc_now
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    by_device,
    make_transfer,
    outcome_json,
    read_results,
    run_apply,
    single_file_artifact,
    write_devices_file,
)
from gapferry.isolated.cli import apply
from gapferry.isolated.record import AppliedRecord

pytestmark = pytest.mark.real_tools


class Site:
    """Two file-placement devices and a state database under one tmp folder."""

    def __init__(self, tmp: Path, keys: Keys) -> None:
        self.tmp = tmp
        self.keys = keys
        self.media = tmp / "media"
        self.state = tmp / "state.db"
        self.roots = {n: tmp / f"root-{n}" for n in ("plc-1", "plc-2")}
        for r in self.roots.values():
            r.mkdir()
        self.art = single_file_artifact(
            tmp / "cfg.mender",
            name="cfg-2",
            dest_dir=Path("/etc/plant"),
            content=b"speed=3\n",
            key=keys.artifact,
        )
        self.devices = write_devices_file(
            tmp / "devices.toml",
            {n: {"method": "file", "path": str(r)} for n, r in self.roots.items()},
            verify_key=keys.artifact.public,
        )

    def plans(self) -> list[DevicePlan]:
        return [DevicePlan(name=n, artifact=self.art, artifact_name="cfg-2") for n in self.roots]

    def placed(self) -> list[str]:
        return sorted(n for n, r in self.roots.items() if (r / "etc/plant/app.conf").exists())

    def results(self) -> list[Path]:
        return [p for p in find_bundles(self.media) if p.name.startswith("result-")]


@pytest.fixture
def site(tmp_path: Path, keys: Keys) -> Site:
    return Site(tmp_path, keys)


def _rejected(site: Site, result_exit: int, output: str, code: str) -> None:
    assert result_exit == 3, output
    doc = json.loads(output)
    assert doc["ok"] is False
    assert doc["error"]["code"] == code
    assert site.placed() == []
    assert site.results() == []


def test_untrusted_signer_rejected(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans(), signer=keys.stranger)
    r = run_apply(site.media, keys, site.devices, site.state)
    _rejected(site, r.exit_code, r.stdout, "untrusted-signer")
    with AppliedRecord(site.state) as rec:
        assert rec.last_sequence("plant-a") is None


def test_threshold_not_met_rejected(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans())
    r = run_apply(site.media, keys, site.devices, site.state, "--threshold", "2")
    _rejected(site, r.exit_code, r.stdout, "below-threshold")


def test_expired_bundle_rejected(site: Site, keys: Keys) -> None:
    now = utc_now()
    make_transfer(
        site.media,
        keys,
        site.plans(),
        created=now - timedelta(days=3),
        expires=now - timedelta(days=1),
    )
    r = run_apply(site.media, keys, site.devices, site.state)
    _rejected(site, r.exit_code, r.stdout, "expired")


def test_clock_behind_creation_rejected_with_reason(site: Site, keys: Keys) -> None:
    now = utc_now()
    make_transfer(
        site.media,
        keys,
        site.plans(),
        created=now + timedelta(days=2),
        expires=now + timedelta(days=9),
    )
    r = run_apply(site.media, keys, site.devices, site.state)
    _rejected(site, r.exit_code, r.stdout, "clock-wrong")
    assert "clock" in json.loads(r.stdout)["error"]["message"]


def test_bundle_for_another_site_rejected(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans(), site="plant-b")
    r = run_apply(site.media, keys, site.devices, site.state, "--site", "plant-a")
    # --site selects bundles by name; a bundle folder passed directly is checked by content.
    assert r.exit_code == 2, r.output
    [bundle] = find_bundles(site.media)
    r = run_apply(bundle, keys, site.devices, site.state)
    _rejected(site, r.exit_code, r.stdout, "wrong-site")


def test_artifact_changed_on_medium_rejected(site: Site, keys: Keys) -> None:
    bundle = make_transfer(site.media, keys, site.plans())
    [stored] = list((bundle / "artifacts").iterdir())
    data = bytearray(stored.read_bytes())
    data[-2000] ^= 1
    stored.write_bytes(bytes(data))
    r = run_apply(site.media, keys, site.devices, site.state)
    _rejected(site, r.exit_code, r.stdout, "digest-mismatch")


def test_replay_of_an_older_bundle_refused_same_bundle_resumes(site: Site, keys: Keys) -> None:
    newer = make_transfer(site.media, keys, site.plans(), sequence=5)
    r = run_apply(newer, keys, site.devices, site.state)
    assert r.exit_code == 0, r.output
    assert site.placed() == ["plc-1", "plc-2"]
    older = make_transfer(site.media, keys, site.plans(), sequence=4)
    r = run_apply(older, keys, site.devices, site.state)
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["error"]["code"] == "replayed"
    # The same bundle again resumes: nothing is placed twice.
    for root in site.roots.values():
        (root / "etc/plant/app.conf").write_bytes(b"edited\n")
    r = run_apply(newer, keys, site.devices, site.state)
    assert r.exit_code == 0, r.output
    assert outcome_json(r)["resumed"] is True
    for root in site.roots.values():
        assert (root / "etc/plant/app.conf").read_bytes() == b"edited\n"


def test_dry_run_changes_nothing(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans())
    runner = CliRunner()
    r = runner.invoke(
        apply,
        [
            str(site.media),
            "--trust",
            str(keys.trust),
            "--devices",
            str(site.devices),
            "--state",
            str(site.state),
            "--dry-run",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert "will install" in r.stdout
    assert "Nothing was changed" in r.stdout
    # What was verified, and where each device will be reached.
    assert (
        "Verified: 1 trusted signature(s) (needed: 1); packed by operator@example.org" in r.stdout
    )
    assert "TARGET" in r.stdout
    assert str(site.roots["plc-1"]) in r.stdout
    assert site.placed() == []
    assert site.results() == []
    with AppliedRecord(site.state) as rec:
        assert rec.last_sequence("plant-a") is None


def test_only_selected_devices_are_installed(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans())
    r = run_apply(site.media, keys, site.devices, site.state, "--only", "plc-2")
    assert r.exit_code == 0, r.output
    d = by_device(outcome_json(r))
    assert d["plc-2"]["outcome"] == "success"
    assert d["plc-1"]["outcome"] == "skipped"
    assert site.placed() == ["plc-2"]
    # Later, the other one: plc-2 is not touched again.
    r = run_apply(site.media, keys, site.devices, site.state)
    assert r.exit_code == 0, r.output
    assert site.placed() == ["plc-1", "plc-2"]
    results = read_results(site.media, keys)
    assert len(results) == 2
    assert all(o.result.manifest.receipt.transfer_bundle_id for o in results)


def test_device_missing_from_devices_file_is_skipped(site: Site, keys: Keys) -> None:
    plans = [*site.plans(), DevicePlan(name="ghost", artifact=site.art, artifact_name="cfg-2")]
    make_transfer(site.media, keys, plans)
    r = run_apply(site.media, keys, site.devices, site.state)
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))
    assert d["ghost"]["outcome"] == "skipped"
    assert d["ghost"]["code"] == "no-target"
    assert site.placed() == ["plc-1", "plc-2"]
    [result] = read_results(site.media, keys)
    ghost = next(x for x in result.result.manifest.devices if x.name == "ghost")
    assert ghost.outcome == "skipped"
    assert ghost.reason is not None


def test_sign_is_required(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans())
    r = CliRunner().invoke(
        apply,
        [str(site.media), "--trust", str(keys.trust), "--devices", str(site.devices)],
        catch_exceptions=False,
    )
    assert r.exit_code == 2
    assert "--sign" in r.output
    assert site.placed() == []


def test_human_output_has_table_and_next_steps(site: Site, keys: Keys) -> None:
    make_transfer(site.media, keys, site.plans())
    r = CliRunner().invoke(
        apply,
        [
            str(site.media),
            "--trust",
            str(keys.trust),
            "--devices",
            str(site.devices),
            "--state",
            str(site.state),
            "--sign",
            str(keys.technician.private),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert "DEVICE" in r.stdout
    assert "OUTCOME" in r.stdout
    assert "now runs cfg-2" in r.stdout
    assert "gapferry ingest" in r.stdout
    assert "[plc-1] installing" in r.stderr


def test_result_not_written_exits_4_and_the_same_bundle_writes_it_later(
    site: Site, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapferry.common.bundle import write_result_bundle
    from gapferry.common.errors import EnvironmentFailure

    make_transfer(site.media, keys, site.plans())
    where = "gapferry.isolated.apply.write_result_bundle"

    def medium_full(*args: object, **kwargs: object) -> Path:
        raise EnvironmentFailure(
            "no space left on the medium", remedy="free space", code="media-write"
        )

    monkeypatch.setattr(where, medium_full)
    r = run_apply(site.media, keys, site.devices, site.state)
    assert r.exit_code == 4, r.output
    assert json.loads(r.stdout)["error"]["code"] == "media-write"
    assert site.placed() == ["plc-1", "plc-2"]
    assert site.results() == []
    # The reports are in the local record: the same bundle again writes them, installs nothing.
    monkeypatch.setattr(where, write_result_bundle)
    for root in site.roots.values():
        (root / "etc/plant/app.conf").write_bytes(b"edited\n")
    r = run_apply(site.media, keys, site.devices, site.state)
    assert r.exit_code == 0, r.output
    assert outcome_json(r)["resumed"] is True
    for root in site.roots.values():
        assert (root / "etc/plant/app.conf").read_bytes() == b"edited\n"
    [result] = read_results(site.media, keys)
    assert [d.outcome for d in result.result.manifest.devices] == ["success", "success"]
