"""Collecting the installed case modules: a collector under the session, with node ids independent of the install.

Registered only when the suite is enabled (see the package's docstring). The session's own collect
report gets one more node, :class:`QaclipSuite`, named by the mount (``qaclip`` for ``--qaclip``,
``benchmarks`` in this repository); under it, one :class:`SuiteModule` per ``test_*.py`` of this
package, imported by its module name (whatever the project's import mode or rootdir) and collected
with the suite's own naming rules (whatever the project's ``python_functions``). Selection (``-k``,
``-m``, ``--deselect``), xdist, reports and pytest-benchmark see ordinary items.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator, Iterable
from types import ModuleType
from typing import Any

import pytest

from qaclip_harness.pytest_plugin.mount import PACKAGE_DIR, mount

PACKAGE = "qaclip_harness.pytest_plugin"


def case_modules() -> list[str]:
    """File names of the suite's case modules, in collection order."""
    return sorted(p.name for p in PACKAGE_DIR.glob("test_*.py"))


class SuiteModule(pytest.Module):
    """One installed case module."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.{self.path.stem}")

    def funcnamefilter(self, name: str) -> bool:
        return name.startswith("test")

    def classnamefilter(self, name: str) -> bool:
        return name.startswith("Test")


class QaclipSuite(pytest.Directory):
    """The suite: its case modules, under the mount's name."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        for name in case_modules():
            yield SuiteModule.from_parent(self, path=PACKAGE_DIR / name, nodeid=f"{self.nodeid}/{name}")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    report = yield
    if isinstance(collector, pytest.Session) and report.passed:
        name = mount(collector.config)
        report.result.append(QaclipSuite.from_parent(collector, path=PACKAGE_DIR, name=name, nodeid=name))
    return report
