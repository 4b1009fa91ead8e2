"""qaclip's pytest plugin: the reproduction and gate suite, installed with the package (entry point ``pytest11: qaclip``).

Inert until asked for: in any project that has installed ``qaclip-core`` it adds one option,
``--qaclip``, and nothing else. Enabled, by ``pytest --qaclip`` or by a conftest.py implementing
:func:`~qaclip_harness.pytest_plugin.hookspecs.pytest_qaclip_mount` (this repository's
``benchmarks/conftest.py``), it registers the suite (:mod:`.plugin`: its options, the session fixture,
ordering, reports, caches, history) and collects the case modules of this package (:mod:`.collect`),
with the project's own cards, datasets and expected numbers (the ``[tool.qaclip]`` table of its
pyproject.toml; docs/own-models.md).

Why through hooks: the case modules are installed files, not files of the project, so pytest's
directory walk never reaches them; the plugin adds them to the collection tree itself, as a
collector under the session whose node ids do not depend on where the package is installed
(``qaclip/test_retrieval.py::...``; ``benchmarks/test_retrieval.py::...`` where this repository
mounts it). The suite's options are registered only once it is enabled, after the project's initial
conftests: a project whose own options share a name (``--device``, ``--report``) is never broken by
merely having ``qaclip-core`` installed.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from qaclip_harness.pytest_plugin.mount import DEFAULT, KEY, PACKAGE_DIR

SUITE = "qaclip-suite"  # the plugin names the enabled suite's modules are registered under
COLLECT = "qaclip-collect"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from qaclip_harness.pytest_plugin import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qaclip", "QA-CLIP reproduction suite")
    group.addoption(
        "--qaclip",
        action="store_true",
        default=False,
        help="collect qaclip's reproduction and gate cases: the built-in cards and expected numbers and the "
        "project's own ([tool.qaclip] of pyproject.toml); `pytest --qaclip --help` lists the suite's options",
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Generator:
    result = yield  # the project's initial conftests are loaded now: one of them may mount the suite
    enable(early_config)
    return result


def enable(config: pytest.Config) -> bool:
    """Register the suite when ``--qaclip`` is given or a conftest mounts it; whether it is enabled."""
    pm = config.pluginmanager
    if pm.has_plugin(SUITE):
        return True
    mount = config.hook.pytest_qaclip_mount(config=config)
    if not (getattr(config.known_args_namespace, "qaclip", False) or mount):
        return False
    config.stash[KEY] = str(mount or DEFAULT).strip("/") or DEFAULT
    from qaclip_harness.pytest_plugin import collect, plugin

    pm.register(plugin, SUITE)  # its pytest_addoption runs now: the suite's options exist from here on
    pm.register(collect, COLLECT)
    return True


def enabled(config: pytest.Config) -> bool:
    """Whether this run has the suite."""
    return config.pluginmanager.has_plugin(SUITE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Any:
    # the installed case modules are collected by the plugin alone, never by a walk of their folder
    # (`pytest .` in a checkout, `pytest site-packages/...`): they would run twice, outside the suite
    if collection_path == PACKAGE_DIR or PACKAGE_DIR in collection_path.parents:
        return True
    return None
