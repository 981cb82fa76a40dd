"""Shared options and output for the connected-side commands (STYLE.md practice 5: thin CLI).

Every command takes ``--state DIR`` (ledger and keys; env ``GAPFERRY_STATE``), ``--json``, and
prints a summary table at the end (to stdout, or one JSON document with ``--json``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from gapferry.common.cliutil import emit_json
from gapferry.connected.session import Session, default_state_dir

__all__ = [
    "ENV_HELP",
    "EXIT_HELP",
    "finish",
    "help_footer",
    "json_option",
    "open_session",
    "print_table",
    "state_option",
]

F = TypeVar("F", bound=Callable[..., Any])

ENV_HELP = (
    "\b\nEnvironment: MENDER_SERVER_URL, MENDER_API_TOKEN (personal access token), "
    "MENDER_TENANT_TOKEN, GAPFERRY_STATE (ledger and keys), GAPFERRY_CA_BUNDLE (on-premises CA), "
    "GAPFERRY_KEY_PASSPHRASE (encrypted device keys; never pass it as an argument)."
)

#: The exit codes of the connected-side commands (`gapferry.common.cliutil`).
EXIT_HELP = (
    "Exit codes: 0 done; 1 a device or row failed (see the table; the others were done) or "
    "the data is invalid; 2 usage (a bad option, MENDER_SERVER_URL or MENDER_API_TOKEN not set); "
    "4 environment (server unreachable or failing, TLS, the ledger)."
)

C = TypeVar("C", bound=click.Command)


def help_footer(*parts: str) -> Callable[[C], C]:
    """Append paragraphs (exit codes, environment) to a command's ``--help``."""

    def deco(cmd: C) -> C:
        cmd.help = "\n\n".join([inspect.cleandoc(cmd.help or ""), *parts])
        return cmd

    return deco


def state_option(f: F) -> F:
    return click.option(
        "--state",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder holding the ledger and device keys [env GAPFERRY_STATE; "
        "default ~/.local/share/gapferry].",
    )(f)


def json_option(f: F) -> F:
    return click.option(
        "--json", "json_output", is_flag=True, help="Print one JSON document instead of a table."
    )(f)


def open_session(
    state_dir: Path | None,
    *,
    command: str,
    concurrency: int = 8,
    allowed_download_hosts: Sequence[str] = (),
    needs_server: bool = False,
) -> Session:
    """The command's session. With `needs_server`, a missing ``MENDER_SERVER_URL`` stops the
    command before it does anything (exit 2), instead of failing every device one by one.

    Raises:
        UsageProblem: ``no-server-url`` (with `needs_server`).
    """
    session = Session.from_env(
        state_dir=state_dir or default_state_dir(),
        command=command,
        concurrency=concurrency,
        allowed_download_hosts=frozenset(allowed_download_hosts),
    )
    if needs_server:
        try:
            session.http  # noqa: B018 - checks the configuration, opens no connection yet
        except BaseException:
            session.close()
            raise
    return session


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], *, title: str = "") -> None:
    """A plain aligned table on stdout."""
    if title:
        click.echo(title)
    if not rows:
        click.echo("  (nothing to do)")
        return
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def finish(
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    *,
    json_output: bool,
    title: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the summary (table or JSON) and exit 1 if any row failed."""
    ok = all(r.get("ok", True) for r in rows)
    if json_output:
        emit_json({"ok": ok, "results": rows, **(extra or {})})
    else:
        print_table(rows, columns, title=title)
    if not ok:
        raise SystemExit(1)
