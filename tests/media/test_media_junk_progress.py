"""Operating-system litter on media (junk.py) and progress bars (progress.py)."""

from __future__ import annotations

import io

import pytest
from gapferry.common.media.junk import is_ignorable
from gapferry.common.media.progress import Progress, format_bytes, format_duration


@pytest.mark.parametrize(
    "name",
    [
        "._manifest.json",
        "._artifact.mender",
        ".DS_Store",
        ".ds_store",
        "System Volume Information",
        ".Trashes",
        ".Spotlight-V100",
        ".fseventsd",
        "Thumbs.db",
        "desktop.ini",
        "Desktop.ini",
    ],
)
def test_os_litter_is_ignorable(name: str) -> None:
    assert is_ignorable(name)


@pytest.mark.parametrize(
    "name",
    [
        "manifest.json",
        "._",
        ".",
        "..",
        "x._y",
        ".DS_Store2",
        "a/._b",
        "._a/b",
        "evil.mender",
        ".manifest.json.part",
    ],
)
def test_everything_else_is_not_ignorable(name: str) -> None:
    assert not is_ignorable(name)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_silent_when_quick() -> None:
    out = TtyBuffer()
    clock = FakeClock()
    with Progress("a.bin", 1000, stream=out, clock=clock) as p:
        assert p.enabled  # stderr-like stream is a tty
        clock.now += 0.5
        p.advance(1000)
    assert out.getvalue() == ""
    assert not p.shown


def test_progress_shows_bar_throughput_and_eta_after_a_second() -> None:
    out = TtyBuffer()
    clock = FakeClock()
    with Progress("artifact.mender", 100 * 1024 * 1024, stream=out, clock=clock) as p:
        clock.now += 2.0
        p.advance(20 * 1024 * 1024)  # 10 MiB/s, 80 MiB left: 8 s
        text = out.getvalue()
        assert "artifact.mender" in text
        assert "20.0%" in text
        assert "10.0 MiB/s" in text
        assert "ETA 0:08" in text
        clock.now += 0.01
        p.advance(1)  # within the redraw interval: no new line
        assert out.getvalue() == text
        clock.now += 6.0
        p(80 * 1024 * 1024 - 1)  # callable like digest's Progress
    assert out.getvalue().endswith("\n")
    assert "100.0%" in out.getvalue()


def test_progress_disabled_when_not_a_tty() -> None:
    out = io.StringIO()  # a pipe/file: isatty() is False
    clock = FakeClock()
    with Progress("x", 10, stream=out, clock=clock) as p:
        clock.now += 5
        p.advance(10)
    assert not p.enabled
    assert out.getvalue() == ""


def test_progress_never_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    with Progress("x", 10, enabled=True, clock=clock) as p:
        clock.now += 5
        p.advance(10)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "x [" in captured.err


def test_formatters() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"
    assert format_duration(65) == "1:05"
    assert format_duration(3723) == "1:02:03"
