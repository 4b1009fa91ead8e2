"""The reproduction suite's session: options, data and checkpoint resolution, model cache, report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import pytest

from qaclip_core.data.catalog import DatasetCard, DatasetMissingError, ensure_dataset, get_dataset
from qaclip_core.data.loader import resolve_workers
from qaclip_core.errors import DownloadError
from qaclip_core.expected import ExpectedCase, load_expected
from qaclip_core.hub import cache_root
from qaclip_core.registry import ModelCard, get_card
from qaclip_core.report import CaseResult, failure_table, render_text, write_reports

REPO = Path(__file__).resolve().parents[1]
BACKEND_CHOICES = ("pytorch", "onnx")
EXPECTED_DIR = Path(os.environ.get("QACLIP_EXPECTED_DIR", REPO / "expected"))


def expected_cases(kind: str) -> List[ExpectedCase]:
    """Cases of ``kind`` from expected/, grouped by model so that each model loads once."""
    cases = [c for c in load_expected(EXPECTED_DIR) if c.kind == kind]
    return sorted(cases, key=lambda c: c.model)


def case_params(kind: str) -> list:
    """pytest params with ids ``<dataset>-<model>``."""
    # xdist_group keeps a model's cases on one worker under `-n N` (see pytest_configure)
    return [pytest.param(c, id=c.id, marks=[pytest.mark.reproduction, pytest.mark.xdist_group(c.model)])
            for c in expected_cases(kind)]


class Suite:
    """Everything one pytest run shares between reproduction cases."""

    def __init__(self, config: pytest.Config):
        opt = config.getoption
        self.data_root = Path(opt("--data-root") or cache_root() / "data").expanduser()
        self.checkpoint_dir = Path(opt("--checkpoint-dir") or cache_root() / "checkpoints").expanduser()
        self.device = _worker_device(config, opt("--device"))
        self.precision = opt("--precision")
        self.batch_size = int(opt("--batch-size"))
        self.num_workers = resolve_workers(opt("--num-workers"), getattr(config, "workerinput", {}).get("workercount", 1))
        self.download = bool(opt("--download"))
        self.compile = bool(opt("--compile"))
        self.backend = opt("--backend")
        if self.backend not in BACKEND_CHOICES:
            raise pytest.UsageError(f"--backend {self.backend!r}: expected one of {', '.join(BACKEND_CHOICES)}")
        self.results: List[CaseResult] = config.stash[_RESULTS_KEY]
        self._encoder_key: Optional[tuple] = None
        self._encoder = None
        self._tmp = Path(tempfile.mkdtemp(prefix="qaclip-suite-"))
        self._fixture_root: Optional[Path] = None
        self._local_hub = None

    # -- data -------------------------------------------------------------------------------
    def data_root_for(self, card: DatasetCard) -> Path:
        """The data root holding ``card``: generated into a temporary root for fixture datasets."""
        if not card.generator:
            return self.data_root
        if self._fixture_root is None:
            from qaclip_core.fixture.shapes import write_shapes_dataset

            root = self._tmp / "fixture-data"
            write_shapes_dataset(root)
            self._fixture_root = root
        return self._fixture_root

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_for(self, card: ModelCard) -> Path:
        """Local path of ``card``'s checkpoint, fetched through the hub code when absent."""
        from qaclip_core.adapters import fetch_weights

        if card.test_only:
            # The fixture travels the real path: served over HTTP on 127.0.0.1, downloaded into a
            # fresh folder, checksummed, then loaded.
            hub = self._fixture_hub()
            return fetch_weights(card, download_root=self._tmp / "fixture-checkpoints", endpoint=hub.endpoint)
        return fetch_weights(card, download_root=self.checkpoint_dir)

    def _fixture_hub(self):
        if self._local_hub is None:
            from qaclip_core.fixture import CHECKPOINT
            from qaclip_core.local_hub import serve_directory

            card = get_card("fixture-tiny")
            served = self._tmp / "hub"
            (served / card.hub_repo).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CHECKPOINT, served / card.hub_repo / card.hub_filename)
            self._local_hub = serve_directory(served)
        return self._local_hub

    def encoder_for(self, card: ModelCard, backend: Optional[str] = None):
        """The encoder of ``card`` on ``backend`` (default: --backend); the previous one is released so only one model is in memory."""
        from qaclip_core.adapters import load_encoder

        backend = backend or self.backend
        key = (card.name, self.device, self.precision, self.compile, backend)
        if key != self._encoder_key:
            # both cleared first: a load that fails must not leave the old key naming no encoder
            self._encoder, self._encoder_key = None, None
            path = self.checkpoint_for(card)
            self._encoder = load_encoder(card, path, device=self.device, precision=self.precision, compile=self.compile,
                                         backend_name=None if backend == "pytorch" else backend)
            self._encoder_key = key
        return self._encoder

    def skip_unless_met(self, case: ExpectedCase, base: dict) -> None:
        """Skip (recorded) a case published for other settings than this run's (e.g. ONNX in fp16)."""
        unmet = case.unmet({"backend": self.backend, "precision": self.precision})
        if unmet:
            reason = f"published for {case.variant}; run with {' '.join(unmet)}"
            self.results.append(CaseResult(status="skipped", reason=reason, **base))
            pytest.skip(reason)

    # -- one case ---------------------------------------------------------------------------
    def run_case(self, case: ExpectedCase) -> CaseResult:
        """Evaluate ``case``; skip (with a one-line reason) when data or weights are missing."""
        from qaclip_core.eval.runner import evaluate_card

        ds = get_dataset(case.dataset)
        model_card = get_card(case.model)
        root = self.data_root_for(ds)
        base = dict(dataset=case.dataset, model=case.model, kind=case.kind, precision=self.precision,
                    backend=self.backend, variant=case.variant)
        self.skip_unless_met(case, base)
        try:
            ensure_dataset(ds, root, download=self.download)
            encoder = self.encoder_for(model_card)
        except (DatasetMissingError, DownloadError, ImportError, NotImplementedError) as e:
            reason = str(e).splitlines()[0]
            self.results.append(CaseResult(status="skipped", reason=reason, **base))
            pytest.skip(reason)
        start = time.perf_counter()
        try:
            out = evaluate_card(encoder, ds, root, batch_size=self.batch_size, num_workers=self.num_workers,
                                download=self.download, progress=False)
            checks = case.check(out.metrics, self.precision)
        except Exception as e:  # recorded so the report lists the case, then raised as the test error
            self.results.append(CaseResult(status="error", reason=f"{type(e).__name__}: {e}".splitlines()[0], **base))
            raise
        result = CaseResult.from_checks(
            device=str(encoder.device), measured=out.metrics, counts=out.counts,
            seconds=round(time.perf_counter() - start, 2), checks=checks, **base,
        )
        self.results.append(result)
        if result.status != "passed":
            pytest.fail(f"{case.id} ({self.precision}) is outside tolerance (gate: {case.gate}):\n"
                        + failure_table(checks), pytrace=False)
        return result

    def close(self) -> None:
        """Stop the local hub and remove temporary files."""
        if self._local_hub is not None:
            self._local_hub.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


_SUITE_KEY = pytest.StashKey[Suite]()
_RESULTS_KEY = pytest.StashKey[List[CaseResult]]()
_WORKER_OUTPUT = "qaclip_results"


def _worker_device(config: pytest.Config, device: str) -> str:
    """Under pytest-xdist, worker gwN takes GPU N modulo the GPU count."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.stash[_RESULTS_KEY] = []
    # plain -n N would scatter a model's cases over workers and load it N times
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in ("no", "load"):
        config.option.dist = "loadgroup"


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workeroutput"):
        config.workeroutput[_WORKER_OUTPUT] = json.dumps([asdict(r) for r in config.stash[_RESULTS_KEY]])


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown when xdist is not installed
def pytest_testnodedown(node, error):
    # runs on the xdist controller: merge the worker's results into one report
    data = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if data:
        node.config.stash[_RESULTS_KEY].extend(CaseResult(**r) for r in json.loads(data))


@pytest.fixture(scope="session")
def suite(request) -> Suite:
    """The session's :class:`Suite`."""
    s = Suite(request.config)
    request.config.stash[_SUITE_KEY] = s
    yield s
    s.close()


def pytest_runtest_setup(item):
    # workers share the machine, so their timings would measure each other
    if item.get_closest_marker("throughput") and getattr(item.config, "workerinput", None) is not None:
        pytest.skip("throughput is not timed under pytest-xdist (-n): run `pytest benchmarks -m throughput -p no:xdist`")


def pytest_collection_modifyitems(session, config, items):
    # Reproduction cases of one model run back to back, so its weights load once.
    def model_of(item):
        spec = getattr(item, "callspec", None)
        case = spec.params.get("case") if spec else None
        return case.model if isinstance(case, ExpectedCase) else None

    repro = [i for i in items if model_of(i) is not None]
    if repro:
        order = sorted(repro, key=lambda i: model_of(i))
        it = iter(order)
        items[:] = [next(it) if model_of(i) is not None else i for i in items]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workeroutput"):
        return  # the controller reports for all workers
    results = sorted(config.stash.get(_RESULTS_KEY, []), key=lambda r: (r.dataset, r.model))
    if not results:
        return
    terminalreporter.section("QA-CLIP reproduction report")
    terminalreporter.write_line(render_text(results))
    out = config.getoption("--report")
    if out:
        meta = {"precision": config.getoption("--precision"), "device": config.getoption("--device"),
                "backend": config.getoption("--backend"),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for path in write_reports(results, out, meta):
            terminalreporter.write_line(f"report written to {path}")
