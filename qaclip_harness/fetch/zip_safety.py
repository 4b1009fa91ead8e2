"""Zip members checked before extraction: none may land outside the target folder (zip-slip)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from qaclip_harness.errors import DatasetError


def check_members(zf: zipfile.ZipFile, target: Path, label: str) -> None:
    """Raise :class:`DatasetError` naming ``label`` and the member if one would extract outside ``target``."""
    inside = Path(target).resolve()
    for member in zf.namelist():
        dest = (Path(target) / member).resolve()
        # containment by path components: /x/stage-evil is not inside /x/stage
        if dest != inside and inside not in dest.parents:
            raise DatasetError(f"{label}: member {member!r} would extract outside the target folder")
