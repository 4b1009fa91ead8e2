"""The project's own cards, datasets and expected numbers in a pytest run, and the marks the suite uses.

Read at configure time by the plugin (:mod:`qaclip_harness.pytest_plugin.plugin`): the ``[tool.qaclip]``
table of the nearest pyproject.toml at or above pytest's rootdir, each key replaced for one run by
``--qaclip-cards``, ``--qaclip-datasets``, ``--qaclip-expected`` (paths relative to the folder pytest
runs from) or ``QACLIP_CARDS``, ``QACLIP_DATASETS``, ``QACLIP_EXPECTED``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from qaclip_harness import project as proj
from qaclip_harness.suite.cases import set_project_expected

# the suite's marks, registered at configure time so that a project running with --strict-markers knows them
MARKERS = (
    "throughput: pytest-benchmark throughput cases",
    "large_model: a throughput case of a large tower (ViT-L/14 and up); off CUDA it runs only with --cpu-large-throughput",
    (
        "peer_backend: a throughput twin of a real architecture from another backend (transformers, ONNX Runtime); "
        "off CUDA it runs only with --cpu-peer-throughput"
    ),
    "reproduction: a published-number case from expected/",
    "suite_case(dataset, model, kind): a suite case outside expected/ (parity, golden...), listed in the report whatever happens",
    "checkpoint_gate: a parity-, example- or golden-<model> case (needs only the checkpoint)",
    "xdist_group(name): keep cases of one model on one pytest-xdist worker",
)


def add_project_options(parser: Any) -> None:
    """``--qaclip-cards``, ``--qaclip-datasets``, ``--qaclip-expected``: a key of [tool.qaclip] replaced for one run."""
    group = parser.getgroup("qaclip", "QA-CLIP reproduction suite")
    for key, flag in proj.OPTION.items():
        env = proj.ENV[key]
        group.addoption(
            flag,
            default=None,
            metavar="PATH",
            help=f"the project's {key} for this run, instead of [tool.qaclip] {key} of its pyproject.toml: files or "
            f"folders, several separated by {os.pathsep!r}, relative to the current folder [env {env}]",
        )


def configure_project(config: pytest.Config) -> proj.Project:
    """Read the project, register its cards and datasets, name its expected files for the suite (ProjectError: one line)."""
    overrides = proj.overrides_from_env()
    for key, flag in proj.OPTION.items():
        value = config.getoption(flag, default=None)
        if value:
            overrides[key] = (str(value), flag)
    found = proj.load_project(config.rootpath, overrides, relative_to=config.invocation_params.dir)
    proj.register(found)
    set_project_expected(list(found.expected))
    return found
