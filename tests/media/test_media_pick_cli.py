"""``auto`` and ``--wait`` on pack, ingest and apply (issue 8) through the one shared helper,
`gapferry.common.media.cli_support`. udev is faked at the pyudev seam (`detect.block_records`)
and mountinfo at `detect.mount_entries`; the sandbox itself has no udev.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media import detect
from gapferry.common.media.cli_support import (
    AUTO,
    MediumPath,
    resolve_medium,
)
from gapferry.common.media.detect import BlockRecord, Medium
from gapferry.common.media.fsinfo import mount_entries
from gapferry.connected import ingest as ingest_ops
from gapferry.connected.cli import ingest as ingest_cli
from gapferry.connected.cli.pack import pack
from gapferry.isolated.cli import apply


def _cmd_args(kind: str, medium: str, tmp: Path) -> tuple[click.Command, list[str]]:
    """A call of `kind` with MEDIA `medium`; the other files exist but are empty, so any attempt
    to read them (which must come after the medium is resolved) would fail differently."""
    site, trust, devices = tmp / "site.toml", tmp / "trust", tmp / "devices.toml"
    for f in (site, trust, devices):
        f.touch()
    if kind == "pack":
        return pack, ["--site", str(site), "--to", medium, "--sign", str(tmp / "key")]
    if kind == "ingest":
        return ingest_cli.ingest, [medium, "--trust", str(trust)]
    return apply, [medium, "--trust", str(trust), "--devices", str(devices), "--dry-run"]


KINDS = ["pack", "ingest", "apply"]
HOW = {"pack": "--to /media/stick", "ingest": "gapferry ingest /media/stick"}


@pytest.fixture
def no_udev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "UDEV_RUN_DIR", tmp_path / "no-udev-here")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("extra", [[], ["--wait"]])
@pytest.mark.usefixtures("no_udev")
def test_auto_without_udev_is_a_usage_error_naming_the_remedy(
    kind: str, extra: list[str], tmp_path: Path
) -> None:
    cmd, args = _cmd_args(kind, "auto", tmp_path)
    res = CliRunner().invoke(cmd, [*args, *extra])
    assert res.exit_code == 2, res.output
    assert "udev is not running here" in res.stderr
    assert "any folder is a medium" in res.stderr
    assert "what to do: give the medium's folder explicitly, for example " in res.stderr
    assert HOW.get(kind, "gapferry apply /media/stick") in res.stderr
    assert "Traceback" not in res.output


@pytest.mark.parametrize("kind", ["ingest", "apply"])
@pytest.mark.usefixtures("no_udev")
def test_auto_without_udev_json_error(kind: str, tmp_path: Path) -> None:
    cmd, args = _cmd_args(kind, "auto", tmp_path)
    res = CliRunner().invoke(cmd, [*args, "--json"])
    assert res.exit_code == 2, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    assert doc["error"]["code"] == "no-udev"
    assert doc["error"]["family"] == "UsageProblem"


@pytest.mark.parametrize("kind", KINDS)
def test_wait_with_a_folder_is_refused(kind: str, tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    cmd, args = _cmd_args(kind, str(stick), tmp_path)
    res = CliRunner().invoke(cmd, [*args, "--wait"])
    assert res.exit_code == 2, res.output
    assert "nothing to wait for" in res.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_folder_is_still_clicks_usage_error(kind: str, tmp_path: Path) -> None:
    cmd, args = _cmd_args(kind, str(tmp_path / "nope"), tmp_path)
    res = CliRunner().invoke(cmd, args)
    assert res.exit_code == 2
    assert "does not exist" in res.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_help_shows_auto_wait_and_exit_codes(kind: str) -> None:
    cmd = {"pack": pack, "ingest": ingest_cli.ingest, "apply": apply}[kind]
    out = CliRunner().invoke(cmd, ["--help"]).output
    assert "auto --wait" in out  # an example
    assert "--wait" in out
    assert "Exit codes:" in out
    assert "2 usage" in out


# --- the shared helper, udev-like inputs faked ------------------------------------------------


def _medium(device: str, mount: Path | None) -> Medium:
    return Medium(
        device=device,
        label="STICK",
        fs_type="vfat",
        size_bytes=8 << 30,
        mount_point=mount,
        free_bytes=1 << 30,
        max_file_size=(4 << 30) - 1,
        bus="usb",
        model=None,
    )


def test_medium_path_type() -> None:
    t = MediumPath(click.Path(exists=True, file_okay=False, path_type=Path))
    assert t.convert("auto", None, None) is AUTO
    assert t.convert(AUTO, None, None) is AUTO
    assert t.convert(".", None, None) == Path()
    with pytest.raises(click.BadParameter):
        t.convert("/no/such/folder", None, None)


def test_resolve_plain_folder_is_untouched(tmp_path: Path) -> None:
    def boom() -> list[Medium]:
        raise AssertionError("a plain folder must not look for media")

    assert resolve_medium(tmp_path, wait=False, how="x", lister=boom, udev=False) == tmp_path


def test_resolve_auto_picks_the_one_mounted_medium(tmp_path: Path) -> None:
    media = [_medium("/dev/sdb1", tmp_path), _medium("/dev/sdc1", None)]
    assert resolve_medium(AUTO, wait=False, how="x", lister=lambda: media, udev=True) == tmp_path


def test_resolve_auto_several_not_interactive(tmp_path: Path) -> None:
    media = [_medium("/dev/sdb1", tmp_path / "a"), _medium("/dev/sdc1", tmp_path / "b")]
    with pytest.raises(UsageProblem) as ei:
        resolve_medium(
            AUTO, wait=False, how="--to /x", lister=lambda: media, udev=True, interactive=False
        )
    assert ei.value.code == "several-media"
    assert "/dev/sdb1" in ei.value.message
    assert "/dev/sdc1" in ei.value.message
    assert "--to /x" in ei.value.remedy


def test_resolve_auto_several_asks_on_a_terminal(tmp_path: Path) -> None:
    media = [_medium("/dev/sdb1", tmp_path / "a"), _medium("/dev/sdc1", tmp_path / "b")]

    @click.command()
    def pick() -> None:
        got = resolve_medium(
            AUTO, wait=False, how="x", lister=lambda: media, udev=True, interactive=True
        )
        click.echo(f"picked {got}")

    res = CliRunner().invoke(pick, input="2\n")
    assert res.exit_code == 0, res.output
    assert f"picked {tmp_path / 'b'}" in res.stdout


def test_resolve_auto_none_mounted(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFailure) as ei:
        resolve_medium(AUTO, wait=False, how="gapferry ingest /s", lister=list, udev=True)
    assert ei.value.code == "no-medium"
    assert "--wait" in ei.value.remedy
    assert "gapferry ingest /s" in ei.value.remedy


def test_resolve_auto_wait_takes_the_stick_inserted_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserted = threading.Event()
    monkeypatch.setattr("gapferry.common.media.cli_support.WAIT_SECONDS", 5.0)

    def lister() -> list[Medium]:
        return [_medium("/dev/sdb1", tmp_path)] if inserted.is_set() else []

    timer = threading.Timer(0.3, inserted.set)
    timer.start()
    try:
        got = resolve_medium(AUTO, wait=True, how="x", lister=lister, udev=True)
    finally:
        timer.cancel()
    assert got == tmp_path  # found while waiting (a timeout raises)


# --- the commands, with udev faked at the pyudev seam -----------------------------------------


@pytest.fixture
def fake_udev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Pretend udev runs and two removable partitions exist; returns the list of mount points
    (tests append to it to mount a stick)."""
    mounted: list[Path] = []
    monkeypatch.setattr(detect, "UDEV_RUN_DIR", tmp_path)

    def records() -> list[BlockRecord]:
        return [
            BlockRecord(
                device=f"/dev/sd{c}1",
                devtype="partition",
                major_minor=f"8:{i * 16 + 1}",
                removable_flag=True,
                bus="usb",
                fs_type="vfat",
                label=f"STICK{i}",
                size_bytes=8 << 30,
                disk=f"/dev/sd{c}",
            )
            for i, c in enumerate("bc")
        ]

    def mounts() -> Any:
        lines = "27 1 254:0 / / rw - ext4 /dev/vda rw\n" + "".join(
            f"{90 + i} 27 8:{i * 16 + 1} / {p} rw - vfat /dev/sd{'bc'[i]}1 rw\n"
            for i, p in enumerate(mounted)
        )
        return mount_entries(lines)

    monkeypatch.setattr(detect, "block_records", records)
    monkeypatch.setattr(detect, "mount_entries", mounts)
    return mounted


class _Report:
    ok = True
    rows: tuple[Any, ...] = ()
    reports_sent = 0
    reports_failed: tuple[str, ...] = ()


def test_ingest_auto_uses_the_detected_stick(
    fake_udev: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    fake_udev.append(stick)
    seen: list[Path] = []

    @contextmanager
    def session(*_a: object, **_k: object) -> Iterator[None]:
        yield None

    def fake_ingest(_session: object, media: Path, **_k: object) -> _Report:
        seen.append(media)
        return _Report()

    class _Policy:
        @staticmethod
        def from_file(*_a: object, **_k: object) -> None:
            return None

    monkeypatch.setattr(ingest_cli, "TrustPolicy", _Policy)
    monkeypatch.setattr(ingest_cli, "open_session", session)
    monkeypatch.setattr(ingest_ops, "ingest", fake_ingest)
    cmd, args = _cmd_args("ingest", "auto", tmp_path)
    res = CliRunner().invoke(cmd, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert seen == [stick]


@pytest.mark.parametrize("kind", KINDS)
def test_auto_with_two_sticks_and_no_terminal(
    kind: str, fake_udev: list[Path], tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        fake_udev.append(tmp_path / name)
    cmd, args = _cmd_args(kind, "auto", tmp_path)
    res = CliRunner().invoke(cmd, args)
    assert res.exit_code == 2, res.output
    assert "several removable media are mounted" in res.stderr
    assert "/dev/sdb1 STICK0 vfat at " in res.stderr
    assert "/dev/sdc1 STICK1 vfat at " in res.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_auto_with_no_stick_is_an_environment_error(
    kind: str, fake_udev: list[Path], tmp_path: Path
) -> None:
    assert fake_udev == []
    cmd, args = _cmd_args(kind, "auto", tmp_path)
    res = CliRunner().invoke(cmd, args)
    assert res.exit_code == 4, res.output
    assert "no mounted removable medium found" in res.stderr
    assert "use --wait" in res.stderr
