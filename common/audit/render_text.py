"""Render an `AuditReport` as plain text (the default output of `gapferry audit`) and JSON.

Text from bundles is untrusted: control characters are replaced so that a device name cannot
move the cursor or rewrite the terminal.
"""

from __future__ import annotations

import re

import msgspec
from gapferry.common.audit.model import AuditReport, BundleSection, CustodyRow

__all__ = ["custody_event_text", "render_json", "render_text", "safe_text"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MARK = {"pass": "ok  ", "fail": "FAIL", "incomplete": "MISS", "info": "info"}


def safe_text(value: object) -> str:
    """One line, control and bidirectional-override characters made visible."""
    text = str(value).replace("\n", "\\n").replace("\t", " ")
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def render_json(report: AuditReport) -> bytes:
    """The report as one JSON document (keys sorted, ``format`` = ``gapferry-audit-v1``)."""
    return msgspec.json.format(msgspec.json.encode(report, order="sorted"), indent=2) + b"\n"


def _bundle(sec: BundleSection) -> list[str]:
    out = [f"{sec.role} bundle {safe_text(sec.folder)}: {sec.status.upper()}"]
    if sec.verified:
        out.append(f"  id {sec.bundle_id}, site {safe_text(sec.site)}, sequence {sec.sequence}")
        out.append(f"  manifest sha256 {sec.manifest_sha256}")
        if sec.actor:
            a = sec.actor
            out.append(
                f"  {'packed' if sec.role == 'transfer' else 'applied'} by {safe_text(a['name'])} "
                f"on {safe_text(a['host'])} ({safe_text(a['software'])})"
            )
        if sec.expires:
            out.append(f"  created {sec.created}, expires {sec.expires}")
        if sec.started:
            out.append(f"  visit {sec.started} .. {sec.finished}, written {sec.created}")
    for s in sec.signatures:
        who = f"{safe_text(s.principal)} " if s.principal else ""
        out.append(
            f"  [{_MARK[s.status]}] signature {s.file}: {who}{s.key_type} {s.fingerprint}"
            + (f" ({s.reason}: {safe_text(s.detail)})" if s.reason else "")
            + (f" (same key as {s.duplicate_of}, counted once)" if s.duplicate_of else "")
        )
        if s.certificate:
            cert = s.certificate
            out.append(
                f"         certificate {safe_text(cert.get('key_id'))} serial "
                f"{safe_text(cert.get('serial'))}, principals "
                f"{safe_text(', '.join(map(str, cert.get('principals') or [])))}, valid "
                f"{safe_text(cert.get('valid_after') or '-')} .. "
                f"{safe_text(cert.get('valid_before') or 'forever')}, "
                f"CA {safe_text(cert.get('ca_key_type'))} {safe_text(cert.get('ca_fingerprint'))}"
            )
        if s.valid_after or s.valid_before:
            out.append(
                f"         allowed_signers validity {s.valid_after or '-'} .. "
                f"{s.valid_before or '-'} ({s.matched_line})"
            )
    for c in sec.checks:
        out.append(f"  [{_MARK[c.status]}] {c.name}: {safe_text(c.summary)}")
    for f in sec.files:
        found = f" found {safe_text(f.found)}" if f.found else ""
        out.append(
            f"  [{_MARK[f.status]}] file {safe_text(f.path)} {f.size} B sha256 {f.sha256}{found}"
        )
    for e in sec.custody:
        out.append(f"  [{_MARK[e.status]}] custody {e.file} {custody_event_text(e)}")
        for p in e.problems:
            out.append(f"         {safe_text(p)}")
    return out


def custody_event_text(e: CustodyRow) -> str:
    """``<time> <actor>: <event> (signed by <principal> <fingerprint>)``; an event whose content
    was not read (its signature failed, or it could not be read safely) says so instead of
    showing blanks, and its problems follow on their own lines."""
    key = e.fingerprint or "unreadable key"
    signed = f"signed by {safe_text(e.signer)} {key}" if e.signer else f"key {key}"
    if e.event is None:
        return f"(content not shown: the event did not verify) ({signed})"
    when = e.at.isoformat() if e.at else "-"
    return f"{when} {safe_text(e.actor or '-')}: {safe_text(e.event)} ({signed})"


def render_text(report: AuditReport) -> str:
    """A plain-text report: the verdict first, then discrepancies, devices and evidence."""
    out = [
        f"AUDIT {report.verdict}: {report.summary}",
        f"checked at {report.checked_at.isoformat()} against {safe_text(report.trust_source)} "
        f"(threshold {report.threshold}); {report.software}",
        "",
    ]
    if report.discrepancies:
        out.append("Discrepancies:")
        out += [
            f"  [FAIL] {c.name} ({safe_text(c.scope)}): {safe_text(c.summary)}"
            for c in report.discrepancies
        ]
        out.append("")
    if report.deployments:
        out.append("Deployments carried:")
        for d in report.deployments:
            out.append(
                f"  {safe_text(d.name)} ({safe_text(d.id)}): {safe_text(', '.join(d.artifacts))} -> "
                f"{safe_text(', '.join(d.devices))}"
            )
        out.append("")
    if report.devices:
        out.append("Devices:")
        for dev in report.devices:
            out.append(
                f"  [{_MARK[dev.status]}] {safe_text(dev.name)}: {safe_text(dev.outcome)}"
                + (f" ({safe_text(dev.reason)})" if dev.reason else "")
                + (
                    f", now runs {safe_text(dev.artifact_name_after)}"
                    if dev.artifact_name_after
                    else ""
                )
            )
            for t in dev.timeline:
                out.append(f"      {t.at.isoformat()}  {safe_text(t.what)}")
        out.append("")
    if report.artifacts:
        out.append("Artifacts:")
        for a in report.artifacts:
            out.append(
                f"  [{_MARK[a.status]}] {safe_text(a.name)} {a.size} B sha256 {a.sha256}: "
                f"{safe_text(a.signature)}"
            )
        out.append("")
    out += _bundle(report.transfer)
    for r in report.results:
        out.append("")
        out += _bundle(r)
    return "\n".join(out) + "\n"
