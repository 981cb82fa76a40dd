"""bundle_spec/VERIFYING.md, run literally: its ```bash blocks, in order, as one bash script, with
real ssh-keygen, sha256sum, find, jq (and mender-artifact for step 8), against generated bundles:
success on good bundles, failure on each kind of tampering."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gapferry.common.audit.custody import append_custody_event, default_custody_actor
from gapferry.common.bundle import (
    Receipt,
)

pytestmark = pytest.mark.real_tools

DOC = Path(__file__).resolve().parents[2] / "bundle_spec" / "VERIFYING.md"
ResultMaker = Callable[..., Path]


def procedure() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 8, "VERIFYING.md changed shape: update this test"
    return "\n".join(blocks)


def run_doc(
    world: Any, *, transfer: Path | None = None, result: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    for tool in ("ssh-keygen", "sha256sum", "jq", "find", "bash"):
        assert shutil.which(tool), f"{tool} is missing: run tests/run.sh to install it"
    variables = {
        **os.environ,
        "TRANSFER": str(transfer or world.transfer),
        "RESULT": str(result) if result is not None else "",
        "ALLOWED_SIGNERS": str(world.keys.allowed_signers),
        "THRESHOLD": "1",
        "ARTIFACT_KEY": "",
        **env,
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", procedure()],
        env=variables,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _custody(bundle: Path, world: Any, text: str) -> None:
    append_custody_event(
        bundle,
        signer=world.keys.alice.signer,
        event=text,
        actor=default_custody_actor("alice"),
        now=datetime.now(tz=UTC),
    )


def test_good_transfer_result_and_custody_pass(world: Any, make_result: ResultMaker) -> None:
    result = make_result(world)
    _custody(world.transfer, world, "received at gate 3")
    _custody(world.transfer, world, "handed to technician")
    _custody(result, world, "result received")
    proc = run_doc(world, result=result)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Good "gapferry-transfer-v1@gapferry" signature for alice@plant-a' in proc.stdout
    assert 'Good "gapferry-result-v1@gapferry" signature for bob@plant-a' in proc.stdout
    assert "custody 2 " in proc.stdout
    assert "handed to technician" in proc.stdout
    assert "device pump-2: failure" in proc.stdout


def test_transfer_alone_passes(world: Any) -> None:
    proc = run_doc(world)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no custody events" in proc.stdout


def test_flipped_artifact_byte_fails(world: Any) -> None:
    target = sorted((world.transfer / "artifacts").glob("*.mender"))[0]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    proc = run_doc(world)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_extra_file_fails(world: Any) -> None:
    (world.transfer / "artifacts" / "extra.mender").write_bytes(b"x")
    assert run_doc(world).returncode != 0


def test_threshold_two_with_one_signer_fails(world: Any) -> None:
    assert run_doc(world, THRESHOLD="2").returncode != 0


def test_result_by_untrusted_key_fails(world: Any, make_result: ResultMaker) -> None:
    result = make_result(world, signers=[world.keys.mallory.signer])
    assert run_doc(world, result=result).returncode != 0


def test_result_for_another_transfer_fails(world: Any, make_result: ResultMaker) -> None:
    other = Receipt(
        transfer_bundle_id=world.receipt.transfer_bundle_id, transfer_manifest_sha256="0" * 64
    )
    proc = run_doc(world, result=make_result(world, receipt=other))
    assert proc.returncode != 0


def test_device_missing_from_result_fails(
    world: Any, make_result: ResultMaker, device_plan: Callable[..., Any]
) -> None:
    t0 = world.created + timedelta(hours=1)
    plans = [device_plan("pump-1", 1, "0d4c7b7e-2f5b-4f8e-9d63-6b1f4a3c2e10", "success", t0)]
    proc = run_doc(world, result=make_result(world, devices=plans))
    assert proc.returncode != 0
    assert "packed but not reported: pump-2, pump-3" in proc.stderr


def test_deployment_not_carried_fails(
    world: Any, make_result: ResultMaker, device_plan: Callable[..., Any]
) -> None:
    t0 = world.created + timedelta(hours=1)
    app, os_ = "0d4c7b7e-2f5b-4f8e-9d63-6b1f4a3c2e10", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    plans = [
        device_plan("pump-1", 1, app, "success", t0),
        device_plan("pump-2", 2, os_, "success", t0),
        device_plan("pump-3", 3, os_, "success", t0),
    ]
    proc = run_doc(world, result=make_result(world, devices=plans))
    assert proc.returncode != 0
    assert "reported but not carried: pump-2" in proc.stderr


def test_edited_custody_event_fails(world: Any) -> None:
    _custody(world.transfer, world, "received at gate 3")
    event = world.transfer / "custody" / "0001.json"
    event.write_bytes(event.read_bytes().replace(b"gate 3", b"gate 4"))
    assert run_doc(world).returncode != 0


def test_removed_custody_event_breaks_the_chain(world: Any) -> None:
    _custody(world.transfer, world, "one")
    _custody(world.transfer, world, "two")
    for name in ("0001.json", "0001.json.sig"):
        (world.transfer / "custody" / name).unlink()
    assert run_doc(world).returncode != 0


def test_custody_event_from_another_bundle_fails(world: Any, make_result: ResultMaker) -> None:
    result = make_result(world)
    _custody(result, world, "belongs to the result")
    shutil.copytree(result / "custody", world.transfer / "custody")
    assert run_doc(world).returncode != 0


def test_artifact_signatures_with_mender_artifact(
    world: Any, signed_artifact_transfer: Any
) -> None:
    assert shutil.which("mender-artifact"), "mender-artifact is missing: run tests/run.sh"
    s = signed_artifact_transfer
    good = run_doc(world, transfer=s.transfer, ARTIFACT_KEY=str(s.key.public))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Mender signature verified" in good.stdout
    bad = run_doc(world, transfer=s.transfer, ARTIFACT_KEY=str(s.other.public))
    assert bad.returncode != 0
