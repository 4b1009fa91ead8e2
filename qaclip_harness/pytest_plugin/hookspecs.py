"""The hook a project implements (in a conftest.py) to run qaclip's suite as part of its own tests."""

from __future__ import annotations

import pytest


@pytest.hookspec(firstresult=True)
def pytest_qaclip_mount(config: pytest.Config) -> str | None:
    """A folder name, relative to the rootdir, under which the suite's cases are collected (their node ids start
    with it), or None.

    Returning a name turns the suite on as ``--qaclip`` does. This repository's ``benchmarks/conftest.py``
    returns ``"benchmarks"``: ``pytest benchmarks`` runs the installed suite under the node ids its history
    was recorded with. Implement it with ``@pytest.hookimpl(optionalhook=True)`` so that the conftest loads
    where the plugin is disabled (``-p no:qaclip``).
    """
