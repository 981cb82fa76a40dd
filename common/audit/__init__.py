"""gapferry.common.audit: audit reports and chain of custody (issue 7; ADRs 0070-0072).

- `run_audit` (`audit`): read a transfer bundle and its results -> `AuditReport` (`model`);
  `build_report` (`core`) is the pure part; `render_text`, `render_json` (`render_text`) and
  `render_html` (`render_html`) print it.
- Custody (`custody`): `append_custody_event`, `read_custody_folder`, `verify_custody`.
- CLIs: `gapferry audit` (`cli`), `gapferry custody add|show` (`custody_cli`).
"""

from gapferry.common.audit.audit import run_audit
from gapferry.common.audit.core import build_report
from gapferry.common.audit.custody import (
    CUSTODY_NAMESPACE,
    CustodyEvent,
    append_custody_event,
    read_custody_folder,
    verify_custody,
)
from gapferry.common.audit.model import AuditReport
from gapferry.common.audit.render_html import render_html
from gapferry.common.audit.render_text import render_json, render_text

__all__ = [
    "CUSTODY_NAMESPACE",
    "AuditReport",
    "CustodyEvent",
    "append_custody_event",
    "build_report",
    "read_custody_folder",
    "render_html",
    "render_json",
    "render_text",
    "run_audit",
    "verify_custody",
]
