"""`pytest benchmarks` in this repository: the installed suite (qaclip_harness/pytest_plugin), mounted here.

A thin user of the same plugin every project gets with `pytest --qaclip`: the cases, options, reports, caches
and history are the plugin's; mounting it here keeps the node ids this repository's history and throughput
baselines (benchmarks/results) were recorded with (benchmarks/test_retrieval.py::test_retrieval[...]), so
`pytest benchmarks -k flickr` selects what `pytest --qaclip -k flickr` selects anywhere.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(optionalhook=True)  # known only where the qaclip plugin is installed and not disabled
def pytest_qaclip_mount(config: pytest.Config) -> str:
    """The suite's cases are collected under this folder's name."""
    return "benchmarks"
