"""``auto`` and ``--wait`` for the commands that take a medium: pack (``--to``), ingest and apply
(their MEDIA argument), issue 8, ADR 0030.

One shared piece so the three commands behave alike: `MediumPath` is a click parameter type that
accepts ``auto`` and otherwise checks a path exactly as the command's own ``click.Path`` did
(so a plain folder behaves as before); `wait_option` adds ``--wait``; `resolve_medium` turns
the parsed value into a folder with `gapferry.common.media.detect.pick_medium`, rewording its
remedies for the command's own option or argument. Lives in common/ because isolated/ may not
import connected/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from gapferry.common.errors import EnvironmentFailure, GapferryError, UsageProblem
from gapferry.common.media.detect import Medium, list_media, pick_medium

__all__ = [
    "AUTO",
    "WAIT_SECONDS",
    "AutoMedium",
    "MediumPath",
    "resolve_medium",
    "wait_option",
]

#: How long ``--wait`` waits for a stick to be inserted and mounted.
WAIT_SECONDS: Final = 300.0

F = TypeVar("F", bound=Callable[..., Any])


class AutoMedium:
    """The parsed value ``auto``: find the medium later, in `resolve_medium`."""

    def __repr__(self) -> str:
        return "AUTO"


#: The one `AutoMedium` value.
AUTO: Final = AutoMedium()


class MediumPath(click.ParamType[Path | AutoMedium]):
    """``auto``, or a path checked by `path` (the command's previous ``click.Path``)."""

    name = "medium"

    def __init__(self, path: click.Path[Path]) -> None:
        self.path = path

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path | AutoMedium:
        if isinstance(value, AutoMedium):
            return value
        if isinstance(value, str) and value == "auto":
            return AUTO
        return self.path.convert(value, param, ctx)


def wait_option(f: F) -> F:
    """Add ``--wait`` (a flag, parsed as ``wait``) for use with ``auto``."""
    return click.option(
        "--wait",
        "wait",
        is_flag=True,
        help=f"With auto: wait up to {WAIT_SECONDS:g} s for a stick to be inserted and mounted "
        "(needs udev).",
    )(f)


def resolve_medium(
    value: Path | AutoMedium,
    *,
    wait: bool,
    how: str,
    lister: Callable[[], list[Medium]] = list_media,
    udev: bool | None = None,
    interactive: bool | None = None,
) -> Path:
    """The medium's folder for a parsed `MediumPath` value: a path as given, or for ``auto`` the
    one mounted removable medium (several: ask on a terminal), waiting with `wait`.

    `how` says how this command takes a folder, for the remedies, e.g. ``--to /media/stick``
    or ``gapferry ingest /media/stick``. `lister`, `udev` and `interactive` are
    `pick_medium`'s seams (tests).

    Raises:
        UsageProblem: ``no-udev`` (``auto`` or ``--wait`` without udev: any folder is a
            medium), ``several-media`` (not on a terminal), ``wait-needs-auto``.
        EnvironmentFailure: ``no-medium`` (none mounted, or none inserted in time).
    """
    if not isinstance(value, AutoMedium):
        if wait:
            raise UsageProblem(
                f"--wait was given with the folder {value}: there is nothing to wait for",
                remedy="use auto instead of the folder to wait for a stick, or drop --wait",
                code="wait-needs-auto",
            )
        return value
    try:
        return pick_medium(
            "auto",
            wait=WAIT_SECONDS if wait else None,
            interactive=interactive,
            lister=lister,
            udev=udev,
        )
    except GapferryError as e:
        better = _reworded(e, how)
        if better is e:
            raise
        raise better from e


def _reworded(err: GapferryError, how: str) -> GapferryError:
    """`err` with a remedy that names this command's way to pass a folder."""
    if err.code == "no-udev":
        return UsageProblem(
            "auto cannot find a stick: udev is not running here (no /run/udev, as in "
            "containers and CI), so removable media cannot be detected and any folder is a "
            "medium",
            remedy=f"give the medium's folder explicitly, for example {how}",
            code="no-udev",
        )
    if err.code == "several-media":
        return UsageProblem(
            err.message,
            remedy=f"give the folder explicitly, for example {how}, or remove the sticks you "
            "do not mean",
            code="several-media",
        )
    if err.code == "no-medium" and isinstance(err, EnvironmentFailure):
        return EnvironmentFailure(
            err.message,
            remedy="insert a stick (and mount it, if your desktop does not), use --wait, or "
            f"give its folder explicitly, for example {how}",
            code="no-medium",
        )
    return err
