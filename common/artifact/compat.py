"""Compatibility checks an applier runs before transferring anything, as mender-client 3.4 does.

`../shared/mender/artifact-and-client.md` 2 and 3.2: the device's type must be one of the
artifact's ``device_type`` list; every ``artifact_depends`` entry must be met by the device's
current provides: ``artifact_name`` / ``artifact_group`` (lists: the current value must be one of
them) from header-info, and type-info depends (a string: equal; a list: one of them). Messages
follow the client's wording so they can be looked up.
"""

from __future__ import annotations

from collections.abc import Mapping

from gapferry.common.artifact.errors import ArtifactIncompatible
from gapferry.common.artifact.reader import ArtifactInfo

__all__ = ["check_compatible"]


def check_compatible(
    info: ArtifactInfo, *, device_type: str, artifact_name: str, provides: Mapping[str, str]
) -> None:
    """Raise unless `info` may be installed on a device with this type, current artifact name and
    provides (``mender show-provides``; ``artifact_name`` in it is overridden by `artifact_name`).

    Raises:
        ArtifactIncompatible: device type not listed, or a dependency not met.
    """
    if device_type not in info.device_types:
        raise ArtifactIncompatible(
            f"installer: image (device types [{' '.join(info.device_types)}]) not compatible"
            f" with device {device_type}",
            remedy="choose an artifact built for this device type (mender-artifact -t)",
        )
    current = dict(provides)
    current["artifact_name"] = artifact_name
    for key, wanted in sorted(info.depends.items()):
        if key == "device_type":
            continue
        have = current.get(key)
        options = [wanted] if isinstance(wanted, str) else list(wanted)
        if have is None or have not in options:
            shown = f"[{' '.join(options)}]" if not isinstance(wanted, str) else wanted
            raise ArtifactIncompatible(
                f'Artifact dependency "{key}" not satisfied by currently installed artifact'
                f" ({shown} != {have if have is not None else '<none>'}).",
                remedy="install the artifact this one depends on first, or pick a matching artifact",
            )
