"""The fixture's generated datasets, written once per generator into the cache and reused by later runs.

Generating them is the slowest step of a fixture run (seconds of PIL drawing and encoding), and
its output depends only on the generator's source and the libraries that encode the images, so
it is kept under ``<cache>/fixture-data/<key>`` keyed by exactly those. What is generated is
still identified by content on every run: the data fingerprint in the report names the build
(``generated-seed-0``), or says it is unknown.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from qaclip_harness.cache.keys import library_versions, make_key, module_digest
from qaclip_harness.files import temp_path


def fixture_data(mode: str, root: Path, scratch: Path) -> Path:
    """A data root holding the fixture datasets: from the cache (mode ``use``/``read-only``), else generated anew.

    ``--no-cache`` generates into ``scratch`` (this run's temporary folder), as a read-only cache
    without the entry does; ``--refresh-cache`` generates and replaces the cached copy.
    """
    from qaclip_harness.data import retrieval
    from qaclip_harness.fixture import shapes

    if mode == "off":
        return _generate(scratch / "fixture-data")
    key = make_key(
        {
            "what": "fixture data",
            "generator": module_digest(shapes, retrieval),
            "versions": {k: library_versions()[k] for k in ("Pillow", "numpy")},
            "lmdb": _lmdb_version(),
        }
    )
    final = Path(root) / "fixture-data" / key[:32]
    if final.is_dir() and mode != "refresh":
        return final
    if mode == "read-only":
        return _generate(scratch / "fixture-data")
    tmp = temp_path(final, folder=True)
    shutil.rmtree(tmp, ignore_errors=True)
    _generate(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():  # refresh: the old copy goes aside first (a reader holding it keeps its files)
        old = temp_path(final.with_name(final.name + "-old"), folder=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another worker put its (identical) copy in place first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _generate(root: Path) -> Path:
    from qaclip_harness.fixture.shapes import write_shapes_dataset

    write_shapes_dataset(root)
    return root


def _lmdb_version() -> str:
    import lmdb

    return lmdb.__version__
