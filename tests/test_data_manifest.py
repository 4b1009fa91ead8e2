"""The data files carried in the repository are exactly those their manifests list, with those digests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = {
    REPO / "tests" / "data" / "MANIFEST.yaml": ("files", REPO / "tests" / "data"),
    REPO / "qaclip_core" / "probe" / "MANIFEST.yaml": ("images", REPO / "qaclip_core" / "probe" / "images"),
}
NOT_DATA = {"MANIFEST.yaml", "__init__.py"}


@pytest.mark.parametrize("manifest", sorted(MANIFESTS), ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_lists_every_file_with_its_digest(manifest):
    section, folder = MANIFESTS[manifest]
    entries = yaml.safe_load(manifest.read_text(encoding="utf-8"))[section]
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name not in NOT_DATA}
    assert present == set(entries), f"{folder}: files not in {manifest.name}: {sorted(present - set(entries))}; " \
                                    f"listed but absent: {sorted(set(entries) - present)}"
    for name, entry in entries.items():
        assert entry.get("source") and entry.get("licence"), f"{manifest}: {name} lacks its source or licence"
        actual = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert actual == entry["sha256"], f"{folder / name}: sha256 {actual}, the manifest pins {entry['sha256']}"


def test_nothing_reads_beside_the_checkout():
    """A fresh clone has nothing beside it: no code or test may reach for ../shared."""
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") or part in ("build", "dist") for part in path.relative_to(REPO).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if '"shared"' in text or "'shared'" in text or "../shared" in text or "parent / \"shared" in text:
            offenders.append(str(path.relative_to(REPO)))
    offenders.remove("tests/test_data_manifest.py")
    assert not offenders, f"these files refer to ../shared: {offenders}"
