"""Shared plumbing for thin CLI commands (STYLE.md practice 5): output, JSON, errors, exit codes.

Exit codes used across gapferry (each command's --help lists the ones it uses):
  0  success
  1  invalid or failed: the data was rejected, or some work failed
  2  usage: bad options or arguments (click's own code)
  3  incomplete or unreadable: a bundle without its completion marker, media not readable
  4  environment: a server, network, tool or media problem outside the data
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from gapferry.common.errors import (
    EnvironmentFailure,
    GapferryError,
    IncompleteBundle,
    InvalidData,
    UsageProblem,
)
from gapferry.common.trust import TrustPolicy

__all__ = [
    "EXIT_ENVIRONMENT",
    "EXIT_INCOMPLETE",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "emit_json",
    "exit_code_for",
    "fail",
    "handle_errors",
    "json_option",
    "load_trust_policy",
    "trust_options",
]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_ENVIRONMENT = 4

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(err: GapferryError) -> int:
    if isinstance(err, IncompleteBundle):
        return EXIT_INCOMPLETE
    if isinstance(err, InvalidData):
        return EXIT_INVALID
    if isinstance(err, UsageProblem):
        return EXIT_USAGE
    if isinstance(err, EnvironmentFailure):
        return EXIT_ENVIRONMENT
    return EXIT_INVALID


def emit_json(obj: Any) -> None:
    """Print one JSON document on stdout (for --json)."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fail(err: GapferryError, *, as_json: bool = False, exit_code: int | None = None) -> NoReturn:
    """Report `err` (diagnostics to stderr, or a JSON error document) and exit."""
    code = exit_code if exit_code is not None else exit_code_for(err)
    if as_json:
        emit_json({"ok": False, "error": err.to_json()})
    else:
        click.secho(f"error: {err.message}", fg="red", err=True)
        click.echo(f"  what to do: {err.remedy}", err=True)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().obj and ctx.find_root().obj.get("verbose"):
        traceback.print_exception(err, file=sys.stderr)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Decorate a click callback so that `GapferryError` becomes a diagnostic and an exit code.

    The callback must accept ``as_json`` through a ``json_output`` parameter if it has --json.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GapferryError as err:
            fail(err, as_json=bool(kwargs.get("json_output", False)))
        except OSError as err:
            # A read or write the command did not foresee (a medium pulled mid-run): a clear
            # diagnostic and exit 4, never a traceback. Paths only: no data goes into it.
            where = f" ({err.filename})" if err.filename else ""
            fail(
                EnvironmentFailure(
                    f"{err.strerror or err}{where}",
                    remedy="check the medium or the path (mounted, writable, space left) and "
                    "run the command again",
                    code="os-error",
                ),
                as_json=bool(kwargs.get("json_output", False)),
            )

    return wrapper  # type: ignore[return-value]


def load_trust_policy(path: Path, *, threshold: int = 1) -> TrustPolicy:
    """Read a --trust allowed_signers file for a command. A missing, unreadable or malformed
    trust file is the caller's problem, not the bundle's: it is a usage error (exit 2), never
    a verdict on the data.

    Raises:
        UsageProblem: with the reader's code (``bad-allowed-signers``, ...) and remedy.
    """
    try:
        return TrustPolicy.from_file(path, threshold=threshold)
    except InvalidData as err:
        raise UsageProblem(err.message, remedy=err.remedy, code=err.code) from err


def trust_options(
    *,
    trust_help: str = "OpenSSH allowed_signers file naming who may sign bundles.",
    threshold_help: str = "Distinct trusted keys that must have signed (m of n).",
    dest: str = "trust_file",
    must_exist: bool = False,
) -> Callable[[F], F]:
    """The ``--trust FILE`` (required, passed as `dest`) and ``--threshold N`` (m of n, at
    least 1) options every verifying command takes, with the same types and defaults."""

    def decorate(func: F) -> F:
        func = click.option(
            "--threshold",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help=threshold_help,
        )(func)
        return click.option(
            "--trust",
            dest,
            required=True,
            type=click.Path(path_type=Path, dir_okay=False, exists=must_exist),
            help=trust_help,
        )(func)

    return decorate


#: ``--json``: one JSON document on stdout instead of text (parameter ``json_output``).
json_option: Callable[[F], F] = click.option(
    "--json", "json_output", is_flag=True, help="Print one JSON document on stdout."
)
