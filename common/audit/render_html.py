"""Render an `AuditReport` as one self-contained HTML page (ADR 0072).

The page has no script, no external asset and no URL: inline CSS only, and a Content Security
Policy (``default-src 'none'``) that forbids every request even if a value slipped through
unescaped. Every value from a bundle is escaped with `html.escape` (quotes included). The verdict
comes first, then the discrepancies, one timeline per device, and the evidence; print CSS makes
it print cleanly to PDF (A4, no cut rows, colours kept).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec
from gapferry.common.audit.model import (
    AuditReport,
    BundleSection,
    Check,
    DeviceRow,
    Status,
)

__all__ = ["render_html"]

_CSS = """
:root { --ok:#1a7f37; --bad:#b42318; --warn:#b54708; --info:#475467; --line:#d0d5dd;
  --soft:#f2f4f7; --ink:#101828; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.mono, code, td.hash { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
.verdict { border-radius: 10px; padding: 16px 20px; margin: 12px 0 8px; color: #fff; }
.verdict .big { font-size: 30px; font-weight: 700; letter-spacing: .04em; }
.verdict.PASS { background: var(--ok); } .verdict.FAIL { background: var(--bad); }
.verdict.INCOMPLETE { background: var(--warn); }
.meta { color: var(--info); margin: 0; }
.badge { display: inline-block; border-radius: 999px; padding: 1px 9px; font-size: 12px;
  font-weight: 600; color: #fff; white-space: nowrap; }
.badge.pass { background: var(--ok); } .badge.fail { background: var(--bad); }
.badge.incomplete { background: var(--warn); } .badge.info { background: var(--info); }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-weight: 600; }
tr { break-inside: avoid; page-break-inside: avoid; }
.devices { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
.device { border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px;
  break-inside: avoid; page-break-inside: avoid; }
.device.fail { border-left: 6px solid var(--bad); } .device.pass { border-left: 6px solid var(--ok); }
.device.info { border-left: 6px solid var(--info); }
.device.incomplete { border-left: 6px solid var(--warn); }
.device h3 { margin: 0 0 4px; display: flex; justify-content: space-between; align-items: flex-start; gap: 8px; }
.timeline { list-style: none; margin: 8px 0 0; padding: 0 0 0 14px; border-left: 2px solid var(--line); }
.timeline li { position: relative; margin: 0 0 6px; }
.timeline li::before { content: ""; position: absolute; left: -20px; top: 6px; width: 10px;
  height: 10px; border-radius: 50%; background: var(--info); }
.timeline li.pass::before { background: var(--ok); } .timeline li.fail::before { background: var(--bad); }
.timeline .when { color: var(--info); font-size: 12px; display: block; }
.disc { border: 2px solid var(--bad); border-radius: 10px; padding: 8px 14px; background: #fef3f2; }
.disc li { margin: 4px 0; }
details { margin: 4px 0 10px; } summary { cursor: pointer; color: var(--info); }
footer { margin-top: 32px; color: var(--info); font-size: 12px; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; page-break-after: avoid; }
  .devices { display: block; }
  .device { margin-bottom: 8px; }
  details > summary { display: none; }
  details { display: block; }
}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'"


def _e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(dt: datetime | None) -> str:
    return "-" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def _badge(status: Status, text: str | None = None) -> str:
    return f'<span class="badge {_e(status)}">{_e(text or status)}</span>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; cells are already-escaped HTML."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _checks(checks: Sequence[Check]) -> str:
    return _table(
        ["Check", "Outcome", "What was found"],
        ([_e(c.name), _badge(c.status), _e(c.summary)] for c in checks),
    )


def _device(d: DeviceRow) -> str:
    facts = [
        f"Mender id <span class='mono'>{_e(d.mender_device_id)}</span>",
        f"deployment {_e(d.deployment_name)} <span class='mono'>({_e(d.deployment_id)})</span>"
        if d.deployment_id
        else "",
        f"artifact {_e(d.artifact_name)}" if d.artifact_name else "",
        f"before: {_e(d.current_artifact_name)}" if d.current_artifact_name else "",
        f"after: {_e(d.artifact_name_after)}" if d.artifact_name_after else "",
        f"reason: {_e(d.reason)}" if d.reason else "",
        f"result: <span class='mono'>{_e(d.result_folder)}</span>" if d.result_folder else "",
    ]
    items = "".join(
        f'<li class="{_e(t.status)}"><span class="when">{_e(_when(t.at))} · {_e(t.source)}'
        f"</span>{_e(t.what)}</li>"
        for t in d.timeline
    )
    out = [
        f'<div class="device {_e(d.status)}"><h3><span>{_e(d.name)}</span>'
        f"{_badge(d.status, d.outcome)}</h3>",
        "<p class='meta'>" + "<br>".join(f for f in facts if f) + "</p>",
        f'<ol class="timeline">{items}</ol>',
    ]
    if d.inventory:
        inv = ", ".join(
            f"{_e(k)}={_e(msgspec.json.encode(v).decode())}" for k, v in d.inventory.items()
        )
        out.append(f"<p class='meta'>inventory: {inv}</p>")
    if d.log:
        lines = "".join(
            f"<tr><td class='mono'>{_e(_when(x.at))}</td><td>{_e(x.level)}</td>"
            f"<td class='mono'>{_e(x.message)}</td></tr>"
            for x in d.log
        )
        more = " (newest lines only)" if d.log_truncated else ""
        out.append(
            f"<details open><summary>log: {len(d.log)} line(s){more}</summary>"
            f"<table><tbody>{lines}</tbody></table></details>"
        )
    out.append("</div>")
    return "".join(out)


def _bundle(sec: BundleSection) -> str:
    out = [
        f"<h3>{_e(sec.role.capitalize())} bundle <span class='mono'>{_e(sec.folder)}</span> "
        f"{_badge(sec.status)}</h3>"
    ]
    facts: list[tuple[str, str]] = []
    if sec.verified:
        facts += [
            ("Bundle id", f"<span class='mono'>{_e(sec.bundle_id)}</span>"),
            ("Manifest sha256", f"<span class='mono'>{_e(sec.manifest_sha256)}</span>"),
            ("Site / sequence", f"{_e(sec.site)} / {_e(sec.sequence)}"),
            ("Created", _e(_when(sec.created))),
        ]
        if sec.expires:
            facts.append(("Expires", _e(_when(sec.expires))))
        if sec.started:
            facts.append(("Visit", f"{_e(_when(sec.started))} to {_e(_when(sec.finished))}"))
        if sec.actor:
            a = sec.actor
            role = "Packed by" if sec.role == "transfer" else "Applied by"
            facts.append(
                (role, f"{_e(a.get('name'))} on {_e(a.get('host'))} ({_e(a.get('software'))})")
            )
        if sec.receipt:
            facts.append(
                (
                    "Receipt",
                    f"<span class='mono'>{_e(sec.receipt.get('transfer_bundle_id'))} / "
                    f"{_e(sec.receipt.get('transfer_manifest_sha256'))}</span>",
                )
            )
    if sec.threshold is not None:
        facts.append(
            (
                "Threshold",
                f"{_e(sec.distinct_trusted)} distinct trusted key(s), {_e(sec.threshold)} required",
            )
        )
    if facts:
        out.append(_table(["Field", "Value"], ([_e(k), v] for k, v in facts)))
    if sec.signatures:
        rows = []
        for s in sec.signatures:
            cert = ""
            if s.certificate:
                c = s.certificate
                principals = ", ".join(str(p) for p in c.get("principals") or [])
                cert = (
                    f"key id {_e(c.get('key_id'))}, serial {_e(c.get('serial'))}, principals "
                    f"{_e(principals)}, valid {_e(c.get('valid_after') or '-')} to "
                    f"{_e(c.get('valid_before') or 'forever')}, CA {_e(c.get('ca_key_type'))} "
                    f"<span class='mono'>{_e(c.get('ca_fingerprint'))}</span>"
                )
            validity = ""
            if s.valid_after or s.valid_before:
                validity = f"{_e(_when(s.valid_after))} to {_e(_when(s.valid_before))}"
            why = _e(s.detail or "")
            if s.duplicate_of:
                why = _e(f"same key as {s.duplicate_of}: counted once")
            rows.append(
                [
                    f"<span class='mono'>{_e(s.file)}</span>",
                    _badge(s.status, s.reason or ("counted" if s.counted else "ok")),
                    _e(s.principal or "-"),
                    f"{_e(s.key_type)}<br><span class='mono'>{_e(s.fingerprint)}</span>",
                    cert or "-",
                    (validity or "-") + (f"<br>{_e(s.matched_line)}" if s.matched_line else ""),
                    why,
                ]
            )
        out.append(
            _table(
                [
                    "Signature",
                    "Outcome",
                    "Signer",
                    "Key",
                    "Certificate",
                    "Trust line validity",
                    "Notes",
                ],
                rows,
            )
        )
    out.append(_checks(sec.checks))
    if sec.custody:
        out.append("<h3>Chain of custody</h3>")
        out.append(
            _table(
                ["#", "When", "Who", "Event", "Signed by", "Outcome"],
                (
                    [
                        _e(e.number),
                        _e(_when(e.at)),
                        _e(e.actor or "-"),
                        _e(e.event)
                        if e.event is not None
                        else "<span class='meta'>not shown: the event did not verify</span>",
                        f"{_e(e.signer or '-')}<br><span class='mono'>{_e(e.fingerprint)}</span>",
                        _badge(e.status) + "".join(f"<br>{_e(p)}" for p in e.problems),
                    ]
                    for e in sec.custody
                ),
            )
        )
    if sec.files:
        out.append(
            f"<details open><summary>{len(sec.files)} file(s) hashed</summary>"
            + _table(
                ["File", "Size", "sha256 (listed)", "Outcome"],
                (
                    [
                        f"<span class='mono'>{_e(f.path)}</span>",
                        _e(f.size),
                        f"<span class='mono'>{_e(f.sha256)}</span>",
                        _badge(f.status) + (f"<br>{_e(f.found)}" if f.found else ""),
                    ]
                    for f in sec.files
                ),
            )
            + "</details>"
        )
    return "".join(out)


def render_html(report: AuditReport) -> str:
    """The report as one HTML document (UTF-8), safe to open from untrusted bundles."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gapferry audit: {_e(report.verdict)} {_e(report.transfer.folder)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>gapferry audit report</h1>",
        f"<p class='meta'>Transfer bundle <span class='mono'>{_e(report.transfer.folder)}</span>"
        f" and {len(report.results)} result bundle(s)</p>",
        f'<div class="verdict {_e(report.verdict)}"><div class="big">{_e(report.verdict)}</div>'
        f"<div>{_e(report.summary)}</div></div>",
        f"<p class='meta'>Checked at {_e(_when(report.checked_at))} against the trust policy "
        f"<span class='mono'>{_e(report.trust_source)}</span> (threshold "
        f"{_e(report.threshold)}) by {_e(report.software)}.</p>",
    ]
    if report.discrepancies:
        out.append("<h2>Discrepancies</h2><div class='disc'><ul>")
        out += [
            f"<li><strong>{_e(c.name)}</strong> ({_e(c.scope)}): {_e(c.summary)}</li>"
            for c in report.discrepancies
        ]
        out.append("</ul></div>")
    if report.devices:
        out.append("<h2>Devices</h2><div class='devices'>")
        out += [_device(d) for d in report.devices]
        out.append("</div>")
    if report.deployments:
        out.append("<h2>Deployments carried</h2>")
        out.append(
            _table(
                ["Deployment", "Id", "Artifacts", "Devices"],
                (
                    [
                        _e(d.name),
                        f"<span class='mono'>{_e(d.id)}</span>",
                        _e(", ".join(d.artifacts)),
                        _e(", ".join(d.devices)),
                    ]
                    for d in report.deployments
                ),
            )
        )
    if report.artifacts:
        out.append("<h2>Artifacts and their Mender signatures</h2>")
        out.append(
            _table(
                ["Artifact", "Size", "sha256", "Mender signature"],
                (
                    [
                        _e(a.name),
                        _e(a.size) + (f" ({a.parts} parts)" if a.parts > 1 else ""),
                        f"<span class='mono'>{_e(a.sha256)}</span>",
                        _badge(a.status) + f" {_e(a.signature)}",
                    ]
                    for a in report.artifacts
                ),
            )
        )
    out.append("<h2>Evidence</h2>")
    out.append(_bundle(report.transfer))
    out += [_bundle(r) for r in report.results]
    out.append(
        f"<footer>Report format {_e(report.format)}. Every value above that comes from a bundle "
        "was verified as described in bundle_spec/VERIFYING.md; the same checks can be repeated "
        "with ssh-keygen, sha256sum and jq.</footer>"
    )
    out.append("</body></html>\n")
    return "\n".join(out)
