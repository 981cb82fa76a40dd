"""The HTML report: self-contained, escaped, and rendered by headless Chromium without a request."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from gapferry.common.audit.audit import run_audit
from gapferry.common.audit.custody import append_custody_event, default_custody_actor
from gapferry.common.audit.render_html import render_html
from gapferry.common.bundle import (
    Actor,
    ArtifactSource,
    Deployment,
    TransferDevicePlan,
    write_transfer_bundle,
)
from gapferry.common.limits import DEFAULT_LIMITS

Cli = Callable[..., Result]

HOSTILE_NAME = '<script>alert("pwned")</script>'
HOSTILE_DEPLOYMENT = '"><img src=http://evil.invalid/x onerror=alert(1)>'


def _hostile_transfer(world: Any) -> Path:
    art = world.tmp / "a.mender"
    art.write_bytes(b"artifact bytes\n")
    return write_transfer_bundle(
        world.tmp / "hostile",
        site="selfcheck",
        sequence=2,
        packer=Actor(name="</style><style>*{display:none}", host="h", software="s"),
        devices=[
            TransferDevicePlan(
                name=HOSTILE_NAME,
                mender_device_id="id-1",
                identity={"mac": "<b>00:11</b>"},
                device_type="t",
                current_artifact_name="old",
                deployment=Deployment(id="dep-1", name=HOSTILE_DEPLOYMENT),
                artifact=ArtifactSource(path=art, name="url(http://evil.invalid/y)"),
            )
        ],
        signers=[world.keys.alice.signer],
        created=world.created,
    )


def _report_html(world: Any, transfer: Path, results: list[Path]) -> str:
    report = run_audit(
        transfer,
        results,
        policy=world.keys.policy(),
        now=datetime.now(tz=UTC),
        limits=DEFAULT_LIMITS,
        trust_source="allowed_signers",
    )
    return render_html(report)


class _Tags(HTMLParser):
    """Every tag and attribute of a page, and the text of its <style> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


_ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "div", "span",
    "strong", "br", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "details",
    "summary", "footer",
}  # fmt: skip
_ALLOWED_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "class", "open"}


def _assert_no_resource_urls(page: str) -> None:
    """No element that can load anything, no attribute that can hold a URL, no url() in CSS."""
    parsed = _Tags()
    parsed.feed(page)
    assert {t for t, _ in parsed.tags} <= _ALLOWED_TAGS
    assert {a for _, attrs in parsed.tags for a, _ in attrs} <= _ALLOWED_ATTRS
    for tag, attrs in parsed.tags:
        for name, value in attrs:
            if tag == "meta" and name == "content":
                continue
            assert value is None or ("//" not in value and ":" not in value), (tag, name, value)
    assert len(parsed.styles) == 1
    css = parsed.styles[0]
    assert "url(" not in css
    assert "@import" not in css
    assert "//" not in css


def test_bundle_values_are_rendered_inert(world: Any) -> None:
    page = _report_html(world, _hostile_transfer(world), [])
    assert HOSTILE_NAME not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=http://evil.invalid/x onerror=alert(1)&gt;" in page
    assert "&lt;/style&gt;&lt;style&gt;" in page
    _assert_no_resource_urls(page)


def test_report_is_self_contained(world: Any, make_result: Callable[..., Path]) -> None:
    page = _report_html(world, world.transfer, [make_result(world)])
    _assert_no_resource_urls(page)
    assert "http://" not in page
    assert "https://" not in page
    assert page.count("<style>") == 1
    assert "default-src 'none'" in page
    assert "@media print" in page
    assert "@page" in page
    # The verdict comes before the devices, the devices before the evidence.
    assert page.index('class="verdict PASS"') < page.index("<h2>Devices</h2>")
    assert page.index("<h2>Devices</h2>") < page.index("<h2>Evidence</h2>")


def test_custody_chain_is_shown_and_a_bad_event_is_not_read(world: Any) -> None:
    for key, text in ((world.keys.alice, "<b>received</b> at gate 3"), (world.keys.mallory, "x")):
        append_custody_event(
            world.transfer,
            signer=key.signer,
            event=text,
            actor=default_custody_actor("guard"),
            now=datetime.now(tz=UTC),
        )
    page = _report_html(world, world.transfer, [])
    chain = page.split("<h3>Chain of custody</h3>", 1)[1].split("</table>", 1)[0]
    assert "&lt;b&gt;received&lt;/b&gt; at gate 3" in chain
    assert "alice@plant-a" in chain
    assert "not shown: the event did not verify" in chain
    assert "untrusted-signer" in chain
    _assert_no_resource_urls(page)


def test_cli_writes_html(world: Any, make_result: Callable[..., Path], cli: Cli) -> None:
    out = world.tmp / "report.html"
    res = cli(
        "audit",
        world.transfer,
        make_result(world),
        "--trust",
        world.keys.allowed_signers,
        "--html",
        out,
    )
    assert res.exit_code == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --- headless Chromium ---------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError(
            "chromium is not installed; tests/run.sh installs it (apt-get install chromium)"
        )
    return path


def _render(page: Path, work: Path, *extra: str) -> list[dict[str, Any]]:
    """Open `page` in headless Chromium (screenshot or PDF via `extra`); return the URL requests
    from its net log."""
    netlog = work / "net.json"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-pings",
            f"--user-data-dir={work / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--log-net-log={netlog}",
            "--window-size=1200,1600",
            *extra,
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = json.loads(netlog.read_text(encoding="utf-8"))
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    return [
        ev["params"]
        for ev in log["events"]
        if types.get(ev["type"]) == "URL_REQUEST_START_JOB" and "url" in ev.get("params", {})
    ]


def _page_requests(requests: list[dict[str, Any]]) -> list[str]:
    """Requests the page made. Chromium's own background requests (updater, sign-in, time) carry
    the initiator ``not an origin``; anything the file:// page loads has initiator ``null``."""
    return [
        r["url"]
        for r in requests
        if r.get("initiator") != "not an origin" and not r["url"].startswith("file:")
    ]


@pytest.mark.real_tools
def test_chromium_detects_a_request_when_there_is_one(tmp_path: Path) -> None:
    # The control: the check below must be able to fail.
    page = tmp_path / "control.html"
    page.write_text(
        '<!DOCTYPE html><body style="background:url(http://bg.gapferry-test.invalid/b.png)">'
        '<img src="http://img.gapferry-test.invalid/x.png"></body>',
        encoding="utf-8",
    )
    urls = _page_requests(_render(page, tmp_path, f"--screenshot={tmp_path / 'c.png'}"))
    assert "http://img.gapferry-test.invalid/x.png" in urls


@pytest.mark.real_tools
def test_chromium_renders_screenshot_and_pdf_without_requests(
    world: Any, make_result: Callable[..., Path]
) -> None:
    hostile = _hostile_transfer(world)
    late = make_result(world, media="r2", started=world.created + timedelta(minutes=30))
    page = world.tmp / "report.html"
    page.write_text(
        _report_html(world, world.transfer, [make_result(world), late]), encoding="utf-8"
    )
    shot = world.tmp / "report.png"
    requests = _render(page, world.tmp / "w1", f"--screenshot={shot}")
    assert _page_requests(requests) == []
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000
    # The hostile page too, and as a PDF (print CSS).
    hostile_page = world.tmp / "hostile.html"
    hostile_page.write_text(_report_html(world, hostile, []), encoding="utf-8")
    pdf = world.tmp / "hostile.pdf"
    requests = _render(
        hostile_page, world.tmp / "w2", f"--print-to-pdf={pdf}", "--no-pdf-header-footer"
    )
    assert _page_requests(requests) == []
    assert pdf.read_bytes().startswith(b"%PDF-")
