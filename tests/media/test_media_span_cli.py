"""`gapferry media span-write` / `span-check` end to end, on small real file systems."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from gapferry.common.media.span import SPAN_NAMESPACE
from gapferry.fixtures.media_mounts import mount_tmpfs

MiB = 1024 * 1024
GAPFERRY = str(Path(sys.executable).parent / "gapferry")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GAPFERRY, "media", *args], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.mark.real_tools
@pytest.mark.root_mounts
def test_span_write_check_missing_corrupt_and_assemble(tmp_path: Path) -> None:
    rnd = random.Random(7)
    bundle = tmp_path / "transfer-plant-a-00000042-9c1e7a2b"
    (bundle / "artifacts").mkdir(parents=True)
    (bundle / "manifest.json").write_bytes(b'{"x": 1}\n')
    (bundle / "artifacts" / "big.mender").write_bytes(rnd.randbytes(6 * MiB + 11))
    (bundle / "COMPLETE").write_bytes(b"done\n")
    key = tmp_path / "packer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().split()
    trust = tmp_path / "allowed_signers"
    trust.write_text(f'packer namespaces="{SPAN_NAMESPACE}" {pub[0]} {pub[1]}\n')

    with contextlib.ExitStack() as stack:
        sticks = []
        for i in range(3):
            (tmp_path / f"s{i + 1}").mkdir()
            sticks.append(stack.enter_context(mount_tmpfs(tmp_path / f"s{i + 1}", size="4m")).path)
        res = run("span-write", str(bundle), *[f"--to={s}" for s in sticks],
                  "--sign", str(key), "--json")  # fmt: skip
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert [s["bytes"] > 0 for s in doc["sticks"]] == [True, True, True]

        # Stick 2 not inserted: named, exit 3 (incomplete), nothing assembled.
        out = tmp_path / "local"
        res = run("span-check", str(sticks[0]), str(sticks[2]), "--trust", str(trust),
                  "--assemble", str(out))  # fmt: skip
        assert res.returncode == 3, res.stdout + res.stderr
        assert "stick 2 of 3" in res.stderr
        assert "is missing" in res.stderr
        assert not out.exists()

        # All present: exit 0, assembled bundle is byte-identical.
        res = run("span-check", *map(str, sticks), "--trust", str(trust), "--assemble", str(out))
        assert res.returncode == 0, res.stdout + res.stderr
        for p in bundle.rglob("*"):
            if p.is_file():
                assert (out / bundle.name / p.relative_to(bundle)).read_bytes() == p.read_bytes()

        # A bit flipped on stick 3: exit 1, stick 3 named as corrupt.
        seg = next(p for p in sticks[2].rglob("*.seg*") if p.stat().st_size > 100)
        data = bytearray(seg.read_bytes())
        data[50] ^= 1
        seg.write_bytes(bytes(data))
        res = run("span-check", *map(str, sticks), "--trust", str(trust), "--json")
        assert res.returncode == 1, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert [s["state"] for s in doc["sticks"]] == ["ok", "ok", "corrupt"]

        # Untrusted signer: exit 1 before any stick is looked at.
        other = tmp_path / "other"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
        )
        opub = other.with_suffix(".pub").read_text().split()
        bad_trust = tmp_path / "other_signers"
        bad_trust.write_text(f'x namespaces="{SPAN_NAMESPACE}" {opub[0]} {opub[1]}\n')
        res = run("span-check", *map(str, sticks), "--trust", str(bad_trust))
        assert res.returncode == 1
        assert "untrusted" in res.stderr.lower() or "not trusted" in res.stderr.lower()


@pytest.mark.real_tools
@pytest.mark.root_mounts
def test_span_write_too_small_in_total_writes_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "transfer-plant-a-00000042-9c1e7a2b"
    bundle.mkdir()
    (bundle / "big.bin").write_bytes(b"\0" * (5 * MiB))
    key = tmp_path / "packer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "s1").mkdir()
    with mount_tmpfs(tmp_path / "s1", size="2m") as m:
        res = run("span-write", str(bundle), "--to", str(m.path), "--sign", str(key))
        assert res.returncode == 4, res.stderr
        assert "add another stick" in res.stderr
        assert list(m.path.iterdir()) == []
