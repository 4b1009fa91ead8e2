"""Where the suite is mounted: the name its node ids start with, and the folder its case modules are installed in."""

from __future__ import annotations

from pathlib import Path

import pytest

DEFAULT = "qaclip"  # the mount of `pytest --qaclip`
PACKAGE_DIR = Path(__file__).resolve().parent  # the installed case modules (test_*.py beside this file)
KEY = pytest.StashKey[str]()


def mount(config: pytest.Config) -> str:
    """The name the suite's node ids start with (``qaclip``, or the folder a conftest mounts it at)."""
    return config.stash.get(KEY, DEFAULT)
