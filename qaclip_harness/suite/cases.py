"""The suite's cases: expected/ read into pytest parameters, and the identity each case has in the report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qaclip_harness.expected import ExpectedCase, load_expected_paths

# The built-in expected numbers ship inside the package: qaclip_harness/expected_numbers is the repository's
# expected/ folder (a link in a checkout, its files in a wheel).
BUILT_IN = Path(__file__).resolve().parents[1] / "expected_numbers"


def expected_dir() -> Path:
    """``$QACLIP_EXPECTED_DIR`` or the package's built-in expected numbers (read when called)."""
    return Path(os.environ.get("QACLIP_EXPECTED_DIR") or BUILT_IN).expanduser()


_EXPECTED: dict[tuple[str, ...], list[ExpectedCase]] = {}
_PROJECT_EXPECTED: list[Path] = []  # the project's expected files and folders ([tool.qaclip] expected)


def set_project_expected(paths: list[Path]) -> None:
    """The project's expected files and folders, read beside the built-in ones (the plugin sets them at configure)."""
    _PROJECT_EXPECTED[:] = list(paths)


def expected_sources() -> list[Path]:
    """Where expected numbers are read from: the built-in folder (or ``$QACLIP_EXPECTED_DIR``), then the project's."""
    return [expected_dir(), *_PROJECT_EXPECTED]


def all_expected() -> list[ExpectedCase]:
    """Every expected case, parsed and validated once per process (a QAClipError names file and key)."""
    key = tuple(str(p) for p in expected_sources())
    if key not in _EXPECTED:
        _EXPECTED[key] = load_expected_paths(expected_sources())
    return _EXPECTED[key]


def expected_cases(kind: str) -> list[ExpectedCase]:
    """Cases of ``kind`` from expected/, grouped by model so that each model loads once."""
    return sorted((c for c in all_expected() if c.kind == kind), key=lambda c: c.model)


def case_params(kind: str) -> list:
    """pytest params with ids ``<dataset>-<model>``."""
    # xdist_group keeps a model's cases on one worker under `-n N` (the plugin sets --dist loadgroup)
    return [
        pytest.param(c, id=c.id, marks=[pytest.mark.reproduction, pytest.mark.xdist_group(c.model)])
        for c in expected_cases(kind)
    ]


def suite_case(dataset: str, model: str, kind: str) -> pytest.MarkDecorator:
    """Mark a suite case that is not an expected/ case (parity, golden...): the report lists it whatever happens."""
    return pytest.mark.suite_case(dataset=dataset, model=model, kind=kind)


def case_of(item: pytest.Item) -> ExpectedCase | None:
    """The expected/ case a test item runs, if it is a reproduction case."""
    spec = getattr(item, "callspec", None)
    case = spec.params.get("case") if spec else None
    return case if isinstance(case, ExpectedCase) else None


def report_identity(item: pytest.Item) -> dict | None:
    """(dataset, model, kind) under which ``item`` appears in the report, or None for other tests."""
    case = case_of(item)
    if case is not None:
        return {"dataset": case.dataset, "model": case.model, "kind": case.kind, "variant": case.variant}
    mark = item.get_closest_marker("suite_case")
    return dict(mark.kwargs) if mark is not None else None
