"""The data files carried in the repository are exactly those their manifests list, with those digests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = {
    REPO / "tests" / "data" / "MANIFEST.yaml": ("files", REPO / "tests" / "data"),
    REPO / "qaclip_harness" / "probe" / "MANIFEST.yaml": ("images", REPO / "qaclip_harness" / "probe" / "images"),
}
NOT_DATA = {"MANIFEST.yaml", "__init__.py"}


@pytest.mark.parametrize("manifest", sorted(MANIFESTS), ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_lists_every_file_with_its_digest(manifest):
    section, folder = MANIFESTS[manifest]
    entries = yaml.safe_load(manifest.read_text(encoding="utf-8"))[section]
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name not in NOT_DATA}
    assert present == set(entries), (
        f"{folder}: files not in {manifest.name}: {sorted(present - set(entries))}; "
        f"listed but absent: {sorted(set(entries) - present)}"
    )
    for name, entry in entries.items():
        assert entry.get("source") and entry.get("licence"), f"{manifest}: {name} lacks its source or licence"
        actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert actual == entry["sha256"], f"{folder / name}: sha256 {actual}, the manifest pins {entry['sha256']}"


# A path that leaves the checkout: a relative literal naming a sibling of the working folder
# ("../<name>"), the repository root's parent, or Path(__file__).parents[k] above the root.
_SIBLING = re.compile(r"""["']\.\.[/\\][A-Za-z_]|REPO\.parent\b""")
_PARENTS = re.compile(r"\.parents\[(\d+)\]")


def _reaches_outside(line: str, depth: int) -> bool:
    """Whether ``line`` of a file ``depth`` folders below the root points above the root."""
    return bool(_SIBLING.search(line)) or any(int(k) > depth for k in _PARENTS.findall(line))


def test_nothing_reads_beside_the_checkout():
    """A fresh clone has nothing beside it: no code or test may reach outside the repository."""
    offenders = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if (
            any(part.startswith(".") or part in ("build", "dist") for part in rel.parts)
            or path == Path(__file__).resolve()
        ):
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        offenders += [f"{rel}:{n}" for n, line in enumerate(lines, 1) if _reaches_outside(line, len(rel.parts) - 1)]
    assert not offenders, f"these lines reach outside the repository: {offenders}"
