"""Exact selection of the suite's cases by registry name: ``--select-models`` and ``--select-datasets``.

``-k`` matches substrings of node ids, so ``-k fixture-tiny`` also selects ``fixture-tiny-rn`` and
``-k qa-clip-vit-l-14`` also selects ``qa-clip-vit-l-14-336``. These options compare whole registry
names instead (a model's alias resolves to its card's name). Why not ``--models``/``--datasets``:
``QACLIP_DATASETS`` and ``qaclip eval --datasets`` already name a project's dataset *card files*
(``[tool.qaclip] datasets``); a selection option of the same name would read one thing on the
command line and another in the environment.

- ``--select-models`` keeps the cases whose report row names one of the models: reproduction
  cases and checkpoint gates (parity, golden, example, ONNX and transformers-format parity).
- ``--select-datasets`` keeps the reproduction cases on one of the datasets.
- Either one leaves out the tests that are not a case of a model card (the throughput cases, which
  time architectures: select those with ``-m throughput``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from qaclip_harness.options import OptionError
from qaclip_harness.report.merge import case_name
from qaclip_harness.suite.cases import case_of, report_identity


@dataclass(frozen=True)
class Selection:
    """The models and datasets a run is restricted to (None: not restricted)."""

    models: frozenset[str] | None = None
    datasets: frozenset[str] | None = None

    @property
    def active(self) -> bool:
        """Whether anything is restricted."""
        return self.models is not None or self.datasets is not None

    def keeps(self, item: pytest.Item) -> bool:
        """Whether ``item`` is in the selection."""
        if not self.active:
            return True
        ident = report_identity(item)
        if ident is None:
            return False
        if self.models is not None and ident["model"] not in self.models:
            return False
        if self.datasets is not None:
            case = case_of(item)
            if case is None or case.dataset not in self.datasets:
                return False
        return True

    def apply(self, items: list[pytest.Item], config: pytest.Config) -> None:
        """Deselect (as ``-k`` does, counted by pytest) every item outside the selection, in place."""
        if not self.active:
            return
        left = [i for i in items if not self.keeps(i)]
        if left:
            config.hook.pytest_deselected(items=left)
            gone = {id(i) for i in left}
            items[:] = [i for i in items if id(i) not in gone]


def split_names(value: str) -> list[str]:
    """The comma-separated names of an option value, stripped, empty ones dropped."""
    return [n.strip() for n in str(value).split(",") if n.strip()]


def resolve_models(value: str, option: str) -> frozenset[str]:
    """Card names for the names (or aliases) in ``value``; an unknown one is an OptionError listing the known names."""
    from qaclip_core.errors import UnknownModelError
    from qaclip_core.registry import all_cards, get_card

    names = split_names(value)
    if not names:
        raise OptionError(option, value, "expected one or more model names separated by commas")
    out = set()
    for name in names:
        try:
            out.add(get_card(name).name)
        except UnknownModelError:
            known = sorted({c.name for c in all_cards()} | {a for c in all_cards() for a in c.aliases})
            raise OptionError(option, value, f"unknown model {name!r}; known models: {', '.join(known)}") from None
    return frozenset(out)


def resolve_datasets(value: str, option: str) -> frozenset[str]:
    """Dataset names in ``value``, each a registered dataset; an unknown one is an OptionError listing the known ones."""
    from qaclip_harness.data.catalog import all_datasets

    names = split_names(value)
    if not names:
        raise OptionError(option, value, "expected one or more dataset names separated by commas")
    known = [d.name for d in all_datasets()]
    for name in names:
        if name not in known:
            raise OptionError(option, value, f"unknown dataset {name!r}; known datasets: {', '.join(sorted(known))}")
    return frozenset(names)


def selection_from(get: Callable[[str], Any], source: Callable[[str], str]) -> Selection:
    """The run's selection from pytest's options (``get``: config.getoption; ``source``: the flag or variable set)."""
    models, datasets = get("--select-models"), get("--select-datasets")
    return Selection(
        models=resolve_models(models, source("--select-models")) if models else None,
        datasets=resolve_datasets(datasets, source("--select-datasets")) if datasets else None,
    )


def names_of(items: Sequence[pytest.Item]) -> list[str]:
    """The report names of the suite cases among ``items`` (see :func:`case_name`)."""
    return [case_name(ident) for ident in (report_identity(i) for i in items) if ident is not None]
