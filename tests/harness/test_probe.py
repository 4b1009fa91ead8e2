"""The probe set: what it covers, and that a changed or missing file is named, not silently used."""

from __future__ import annotations

import shutil
import sys

import pytest

from qaclip_core import tokenize
from qaclip_core.tokenizer import preprocess_text
from qaclip_harness.probe import PROBE_DIR, ProbeDataError, load_probe_set
from tests.conftest import REPO


def test_probe_set_covers_the_modes_sizes_and_captions_it_promises():
    probe = load_probe_set()
    assert probe.image_names[0] == "pokemon.jpeg" and len(probe.images) >= 30
    assert {"RGB", "RGBA", "P", "L", "LA", "1", "I;16", "CMYK"} <= {im.mode for im in probe.images}
    ratios = [im.width / im.height for im in probe.images]
    assert min(ratios) <= 1 / 8 and max(ratios) >= 8
    assert min(im.width * im.height for im in probe.images) <= 16 and max(im.width for im in probe.images) >= 1024
    assert {"GIF", "PNG", "JPEG", "WEBP", "BMP", "TIFF"} <= {im.format for im in probe.images}
    lengths = (tokenize([preprocess_text(c) for c in probe.captions]) != 0).sum(dim=1)
    assert len(probe.captions) == 64 and "" in probe.captions
    assert any(len(c) > 52 for c in probe.captions) and int(lengths.max()) == 52  # one is truncated
    assert {"杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"} <= set(probe.captions)


@pytest.fixture
def copy(tmp_path):
    out = tmp_path / "probe"
    shutil.copytree(PROBE_DIR, out, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return out


def test_changed_image_is_named(copy):
    path = copy / "images" / "rings-224x224.png"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ProbeDataError, match=r"rings-224x224\.png has sha256 [0-9a-f]{64}, but MANIFEST.yaml pins"):
        load_probe_set(copy)


def test_changed_captions_are_named(copy):
    path = copy / "captions.json"
    path.write_text(path.read_text(encoding="utf-8").replace("皮卡丘", "皮卡皮"), encoding="utf-8")
    with pytest.raises(ProbeDataError, match=r"captions\.json has sha256"):
        load_probe_set(copy)


def test_missing_image_is_named(copy):
    (copy / "images" / "noise-7x5.png").unlink()
    with pytest.raises(ProbeDataError, match=r"noise-7x5\.png cannot be read .*MANIFEST.yaml lists it"):
        load_probe_set(copy)


def test_manifest_without_digest_is_named(copy):
    manifest = copy / "MANIFEST.yaml"
    manifest.write_text(
        manifest.read_text(encoding="utf-8").replace("  captions.json:\n    sha256:", "  captions.json:\n    sha:"),
        encoding="utf-8",
    )
    with pytest.raises(ProbeDataError, match=r"files/captions.json has no sha256"):
        load_probe_set(copy)


def test_generator_is_deterministic_and_matches_the_manifest_names():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_probe_set
    finally:
        sys.path.remove(str(REPO / "tools"))
    first = make_probe_set.generate()
    assert first == make_probe_set.generate()
    assert set(first) | {"pokemon.jpeg"} == set(load_probe_set().image_names)
