"""Names that operating systems drop on removable media, which readers ignore (issue 8).

macOS writes AppleDouble files (``._name``), ``.DS_Store``, ``.Trashes``, ``.Spotlight-V100`` and
``.fseventsd``; Windows writes ``System Volume Information``, ``Thumbs.db`` and ``desktop.ini``.
None of them is ever part of a bundle (bundle_spec/SPEC.md, "Layout on media"), so a reader skips
them silently and reports any *other* unexpected file. The comparison is exact for the fixed names
except for case, because FAT32/exFAT/NTFS are case-insensitive and tools differ in the case they use.
"""

from __future__ import annotations

__all__ = ["IGNORABLE_NAMES", "is_ignorable"]

#: Fixed names (compared case-insensitively) that operating systems create on media.
IGNORABLE_NAMES: frozenset[str] = frozenset(
    name.casefold()
    for name in (
        ".DS_Store",
        "System Volume Information",
        ".Trashes",
        ".Spotlight-V100",
        ".fseventsd",
        ".TemporaryItems",
        "Thumbs.db",
        "desktop.ini",
    )
)


def is_ignorable(name: str) -> bool:
    """True when `name` (one path component) is operating-system litter a reader must skip.

    AppleDouble files are recognised by their ``._`` prefix; ``._`` alone or ``.`` / ``..`` are
    not ignorable (they are not litter but a broken or hostile name, which the caller reports).
    """
    if "/" in name or "\\" in name:
        return False
    if name.startswith("._") and len(name) > 2:
        return True
    return name.casefold() in IGNORABLE_NAMES
