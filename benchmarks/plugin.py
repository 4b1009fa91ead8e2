"""The reproduction suite's session: options, data and checkpoint resolution, model cache, report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from qaclip_core import options as opts
from qaclip_core.data.catalog import DatasetCard, DatasetMissingError, ensure_dataset, get_dataset
from qaclip_core.data.loader import resolve_workers
from qaclip_core.errors import DownloadError, MissingDependencyError, QAClipError, UnsupportedError
from qaclip_core.expected import ExpectedCase, check_against_catalog, load_expected
from qaclip_core.hub import cache_root
from qaclip_core.registry import ModelCard, get_card
from qaclip_core.report import CaseResult, failure_table, render_text, write_reports

from .progress import terminal_progress

REPO = Path(__file__).resolve().parents[1]
# Why a case may skip instead of fail: what it needs is absent on this machine. Anything else
# (a bug, a corrupt file, a broken import inside the package) is an error.
SKIPPABLE = (DatasetMissingError, DownloadError, MissingDependencyError, UnsupportedError)


def expected_dir() -> Path:
    """``$QACLIP_EXPECTED_DIR`` or the repository's ``expected/`` (read when called)."""
    return Path(os.environ.get("QACLIP_EXPECTED_DIR") or REPO / "expected").expanduser()


_EXPECTED: Dict[str, List[ExpectedCase]] = {}


def all_expected() -> List[ExpectedCase]:
    """Every expected case, parsed and validated once per process (a QAClipError names file and key)."""
    key = str(expected_dir())
    if key not in _EXPECTED:
        _EXPECTED[key] = load_expected(expected_dir())
    return _EXPECTED[key]


def expected_cases(kind: str) -> List[ExpectedCase]:
    """Cases of ``kind`` from expected/, grouped by model so that each model loads once."""
    return sorted((c for c in all_expected() if c.kind == kind), key=lambda c: c.model)


def case_params(kind: str) -> list:
    """pytest params with ids ``<dataset>-<model>``."""
    # xdist_group keeps a model's cases on one worker under `-n N` (see pytest_configure)
    return [pytest.param(c, id=c.id, marks=[pytest.mark.reproduction, pytest.mark.xdist_group(c.model)])
            for c in expected_cases(kind)]


@dataclass(frozen=True)
class SuiteOptions:
    """The suite's options, validated once at configure time."""

    data_root: Path
    checkpoint_dir: Path
    device: str
    precision: str
    batch_size: int
    num_workers: int
    download: bool
    compile: bool
    require_data: bool
    report: Optional[Path]
    lock_file: Optional[Path]
    verify: bool
    evaluate_any_split: bool
    backend: str = "pytorch"


def _validated_options(config: pytest.Config) -> SuiteOptions:
    """Every suite option checked (``QAClipError`` with the option and value), before any case runs."""
    opt = config.getoption
    workers = str(opt("--num-workers"))
    try:
        count = getattr(config, "workerinput", {}).get("workercount", 1)
        num_workers = resolve_workers(workers, count)
    except ValueError as e:
        raise opts.OptionError("--num-workers", workers, str(e).split(", got ")[0]) from None
    return SuiteOptions(
        data_root=opts.folder(opt("--data-root"), "--data-root") or cache_root() / "data",
        checkpoint_dir=opts.folder(opt("--checkpoint-dir"), "--checkpoint-dir") or cache_root() / "checkpoints",
        device=opts.device(opt("--device")),
        precision=opts.precision(opt("--precision")),
        batch_size=opts.positive_int(opt("--batch-size"), "--batch-size"),
        num_workers=num_workers,
        download=bool(opt("--download")),
        compile=bool(opt("--compile")),
        require_data=bool(opt("--require-data")),
        report=opts.new_output_folder(opt("--report"), "--report") if not hasattr(config, "workerinput") else None,
        lock_file=Path(opt("--lock-file")).expanduser().resolve() if opt("--lock-file") else None,
        verify=bool(opt("--verify")),
        evaluate_any_split=bool(opt("--evaluate-any-split")),
        backend=_backend(opt("--backend")),
    )


BACKEND_CHOICES = ("pytorch", "onnx")


def _backend(value: str) -> str:
    if value not in BACKEND_CHOICES:
        raise opts.OptionError("--backend", value, f"expected one of {', '.join(BACKEND_CHOICES)}")
    return value


class Suite:
    """Everything one pytest run shares between reproduction cases."""

    def __init__(self, config: pytest.Config):
        o: SuiteOptions = config.stash[_OPTIONS_KEY]
        self.options = o
        self.data_root = o.data_root
        self.checkpoint_dir = o.checkpoint_dir
        self.device = _worker_device(config, o.device)
        self.precision = o.precision
        self.batch_size = o.batch_size
        self.num_workers = o.num_workers
        self.download = o.download
        self.compile = o.compile
        self.backend = o.backend
        self.results: Dict[str, CaseResult] = config.stash[_RESULTS_KEY]
        self.progress = terminal_progress(config)
        self._encoder_key: Optional[tuple] = None
        self._encoder = None
        self._tmp = Path(tempfile.mkdtemp(prefix="qaclip-suite-"))
        self._fixture_root: Optional[Path] = None
        self._local_hub = None
        self._hf_served = False
        self._digests: Dict[str, str] = {}

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
            return self._fixture_checkpoint(card)
        return fetch_weights(card, download_root=self.checkpoint_dir)

    def _fixture_checkpoint(self, card: ModelCard) -> Path:
        from qaclip_core.adapters import fetch_weights
        from qaclip_core.fixture import CHECKPOINT
        from qaclip_core.hub import is_offline, verify_file

        if is_offline():
            # Offline (an air-gapped runner): the fixture ships inside the package, so it is read
            # from there, checked against its card's sha256; no server is started.
            native = get_card("fixture-tiny")
            verify_file(CHECKPOINT, native.sha256, f"the packaged fixture checkpoint of {native.name}", sidecar=False)
            if card.adapter == "native":
                return CHECKPOINT
            return self._fixture_converted(card)
        # Online, the fixture travels the real path: served over HTTP on 127.0.0.1, downloaded
        # into a fresh folder, checksummed, then loaded.
        hub = self._fixture_hub() if card.adapter == "native" else self._fixture_hub_with_copies()
        return fetch_weights(card, download_root=self._tmp / "fixture-checkpoints", endpoint=hub.endpoint)

    def _fixture_converted(self, card: ModelCard) -> Path:
        """The transformers-format copy of the fixture, converted into this run's folder (offline runs)."""
        from qaclip_core.adapters import backend

        backend(card.adapter).import_transformers()  # a missing transformers skips, naming the extra
        folder = self._tmp / "fixture-converted" / card.hub_repo
        if not folder.is_dir():
            from qaclip_core.fixture.hf import write_converted

            write_converted(self._tmp / "fixture-converted")
        return folder

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

    def _fixture_hub_with_copies(self):
        """The fixture's hub, also serving its transformers-format copy (converted once, when first asked for)."""
        hub = self._fixture_hub()
        if not self._hf_served:
            from qaclip_core.fixture.hf import write_converted

            write_converted(self._tmp / "hub")  # seconds (transformers' import): only for runs that need it
            self._hf_served = True
        return hub

    def encoder_for(self, card: ModelCard, backend: Optional[str] = None):
        """The encoder of ``card`` on ``backend`` (default: --backend); the previous one is released so only one model is in memory."""
        from qaclip_core.adapters import load_encoder

        backend = backend or self.backend
        key = (card.name, self.device, self.precision, self.compile, backend)
        if key != self._encoder_key:
            self._encoder = None
            self._encoder_key = None
            path = self.checkpoint_for(card)
            self._encoder = load_encoder(card, path, device=self.device, precision=self.precision, compile=self.compile,
                                         backend_name=None if backend == "pytorch" else backend)
            self._encoder_key = key
        return self._encoder

    def skip_unless_met(self, item: pytest.Item, case: ExpectedCase) -> None:
        """Skip (recorded) a case published for other settings than this run's (e.g. ONNX in fp16)."""
        unmet = case.unmet({"backend": self.backend, "precision": self.precision})
        if unmet:
            reason = f"published for {case.variant}; run with {' '.join(unmet)}"
            self.record(item, CaseResult(status="skipped", reason=reason, **self._base(case)))
            pytest.skip(reason)

    # -- one case ---------------------------------------------------------------------------
    def skip_or_fail(self, item: pytest.Item, case: ExpectedCase, reason: str) -> None:
        """Skip for a missing prerequisite; with ``--require-data`` that is a failure instead."""
        if self.options.require_data:
            self.record(item, CaseResult(status="error", reason=f"required but missing: {reason}", **self._base(case)))
            pytest.fail(f"{case.id}: --require-data is set and {reason}", pytrace=False)
        self.record(item, CaseResult(status="skipped", reason=reason, **self._base(case)))
        pytest.skip(reason)

    def _base(self, case: ExpectedCase) -> dict:
        return dict(dataset=case.dataset, model=case.model, kind=case.kind, precision=self.precision,
                    backend=self.backend, variant=case.variant)

    def record(self, item: pytest.Item, result: CaseResult) -> CaseResult:
        """Keep ``result`` for the report and, for JUnit XML, as properties of ``item``."""
        self.results[item.nodeid] = result
        item.user_properties.extend(junit_properties(result))
        return result

    def checkpoint_digest(self, card: ModelCard) -> Optional[str]:
        """sha256 of the card's weights (a pinned card's own value: its file was verified against it)."""
        from qaclip_core.hub import sha256_of

        if card.name not in self._digests:
            self._digests[card.name] = card.sha256 or sha256_of(self.checkpoint_for(card))
        return self._digests[card.name]

    def run_case(self, case: ExpectedCase, item: pytest.Item) -> CaseResult:
        """Evaluate ``case``; skip (with a one-line reason) when data or weights are missing."""
        from qaclip_core.data.splits import SplitMismatchError
        from qaclip_core.eval.runner import evaluate_card

        ds = get_dataset(case.dataset)
        model_card = get_card(case.model)
        root = self.data_root_for(ds)
        self.skip_unless_met(item, case)
        try:
            ensure_dataset(ds, root, download=self.download)
            encoder = self.encoder_for(model_card)
        except SKIPPABLE as e:
            self.skip_or_fail(item, case, str(e).splitlines()[0])
        start = time.perf_counter()
        try:
            out = evaluate_card(encoder, ds, root, batch_size=self.batch_size, num_workers=self.num_workers,
                                download=self.download, progress=self.progress,
                                split_policy="warn" if self.options.evaluate_any_split else "strict")
        except SplitMismatchError as e:  # wrong data: stopped before any encoding, nothing to compare
            self.record(item, CaseResult(status="error", reason=str(e), counts=e.check.found, **self._base(case),
                                         provenance={"split_check": e.check.as_dict()}))
            pytest.fail(f"{case.id}: {e}", pytrace=False)
        decision = case.gate_for(out.provenance.get("build"))
        checks = case.check(out.metrics, self.precision, decision)
        result = self.record(item, CaseResult.from_checks(
            device=str(encoder.device), measured=out.metrics, counts=out.counts,
            seconds=round(time.perf_counter() - start, 2), checks=checks,
            report_only=_report_reason(case.report_only, encoder), gate=decision.source, gate_reason=decision.reason,
            sources=case.source_deltas(out.metrics), checkpoint_sha256=self.checkpoint_digest(model_card),
            data_fingerprint=out.provenance.get("data_fingerprint"), provenance=_case_provenance(out.provenance),
            **self._base(case),
        ))
        if result.status == "failed":
            pytest.fail(failure_message(case, result, checks, self.precision), pytrace=False)
        return result

    def close(self) -> None:
        """Stop the local hub and remove temporary files."""
        if self._local_hub is not None:
            self._local_hub.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _case_provenance(data: dict) -> dict:
    """The data provenance a report keeps per case (the folder and fingerprint parts included)."""
    return {k: v for k, v in data.items() if k != "data_fingerprint"}


def failure_message(case: ExpectedCase, result: CaseResult, checks, precision: str) -> str:
    """Why a case failed: the table against the gate, the data it ran on, and the sources it does match."""
    lines = [f"{case.id} ({precision}) is outside tolerance (gate: {result.gate}; {result.gate_reason}):",
             failure_table(checks)]
    prov = result.provenance or {}
    lines.append(f"data: {prov.get('folder')} (fingerprint {str(result.data_fingerprint)[:16]}..., build "
                 f"{prov.get('build') or 'unknown'}, {', '.join(f'{v:,} {k}' for k, v in (prov.get('counts') or {}).items())})")
    matching = []
    for src, deltas in result.sources.items():
        if src == result.gate or not deltas:
            continue
        worst = max(abs(d["delta"]) for d in deltas.values())
        tol = min(c.tolerance for c in checks) if checks else 0.0
        if worst <= tol + 1e-9:
            build = case.sources[src].build
            matching.append(f"{src} (measured on build {build or 'unstated'}; largest |delta| {worst:.2f})")
    if matching:
        lines.append("within tolerance of another source: " + "; ".join(matching)
                     + ": the data may be that source's build, or the model matches that measurement")
    return "\n".join(lines)


def junit_properties(result: CaseResult) -> List[tuple]:
    """(name, value) pairs for JUnit XML: the case's status, and per metric its four numbers."""
    props = [("qaclip.status", result.status), ("qaclip.precision", result.precision)]
    if result.reason:
        props.append(("qaclip.reason", result.reason))
    for name in ("gate", "checkpoint_sha256", "data_fingerprint"):
        if getattr(result, name):
            props.append((f"qaclip.{name}", getattr(result, name)))
    for c in result.checks:
        for field in ("measured", "expected", "delta", "tolerance"):
            if c.get(field) is not None:  # checkpoint gates hold some rows against nothing published
                props.append((f"{c['metric']}.{field}", round(float(c[field]), 4) + 0.0))  # + 0.0: no "-0.0"
    return props


def _report_reason(reason: Optional[str], encoder) -> Optional[str]:
    """A report-only case's reason, with the preprocessing steps its encoder does differently (if it lists them)."""
    differences = getattr(encoder, "differences", None)
    if reason is None or not differences:
        return reason
    return f"{reason}; differs from the reference protocol in: " + "; ".join(differences)


_SUITE_KEY = pytest.StashKey[Suite]()
_OPTIONS_KEY = pytest.StashKey[SuiteOptions]()
_RESULTS_KEY = pytest.StashKey[Dict[str, CaseResult]]()
_LEFT_OUT_KEY = pytest.StashKey[List[tuple]]()  # (marker, count) of the CPU throughput groups left out
# (marker, option, what): CPU throughput groups that run only when asked for (always on CUDA)
_CPU_OPT_IN = [
    ("large_model", "--cpu-large-throughput",
     "of the large towers (ViT-L/14, ViT-L/14@336, ViT-H/14, AltCLIP; minutes each on a CPU)"),
    ("peer_backend", "--cpu-peer-throughput",
     "of the transformers and ONNX Runtime twins of the real architectures (conversion or export first)"),
]
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


def _resolved_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _runs_on_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.stash[_RESULTS_KEY] = {}
    config.stash[_LEFT_OUT_KEY] = []
    try:
        config.stash[_OPTIONS_KEY] = o = _validated_options(config)
        # the hub reads these at call time (and xdist workers inherit them)
        if o.lock_file is not None:
            if o.lock_file.is_dir():
                raise opts.OptionError("--lock-file", str(o.lock_file), "expected a file path, but it is a folder")
            os.environ["QACLIP_LOCK_FILE"] = str(o.lock_file)
        if o.verify:
            os.environ["QACLIP_VERIFY"] = "1"
        if not expected_dir().is_dir():
            raise QAClipError(f"QACLIP_EXPECTED_DIR {str(expected_dir())!r}: no such folder of expected YAML files")
        if not all_expected():  # a malformed expected file stops the run here, naming the file and key
            raise QAClipError(f"QACLIP_EXPECTED_DIR {str(expected_dir())!r}: holds no expected *.yaml files")
        check_against_catalog(all_expected())
    except QAClipError as e:
        raise pytest.UsageError(str(e)) from None
    # plain -n N would scatter a model's cases over workers and load it N times
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") in ("no", "load"):
        config.option.dist = "loadgroup"


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workeroutput"):
        config.workeroutput[_WORKER_OUTPUT] = json.dumps({k: asdict(r) for k, r in config.stash[_RESULTS_KEY].items()})


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown when xdist is not installed
def pytest_testnodedown(node, error):
    # runs on the xdist controller: merge the worker's results into one report
    data = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if data:
        node.config.stash[_RESULTS_KEY].update({k: CaseResult(**r) for k, r in json.loads(data).items()})


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


def _case_of(item: pytest.Item) -> Optional[ExpectedCase]:
    spec = getattr(item, "callspec", None)
    case = spec.params.get("case") if spec else None
    return case if isinstance(case, ExpectedCase) else None


def suite_case(dataset: str, model: str, kind: str) -> pytest.MarkDecorator:
    """Mark a suite case that is not an expected/ case (parity, golden...): the report lists it whatever happens."""
    return pytest.mark.suite_case(dataset=dataset, model=model, kind=kind)


def _report_identity(item: pytest.Item) -> Optional[dict]:
    """(dataset, model, kind) under which ``item`` appears in the report, or None for other tests."""
    case = _case_of(item)
    if case is not None:
        return dict(dataset=case.dataset, model=case.model, kind=case.kind, variant=case.variant)
    mark = item.get_closest_marker("suite_case")
    return dict(mark.kwargs) if mark is not None else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # Every collected suite case appears in the report: one that ended without recording a
    # result (a crash while resolving its checkpoint, a fixture error...) is recorded here.
    ident = _report_identity(item)
    results = item.config.stash[_RESULTS_KEY]
    if ident is not None and item.nodeid not in results and (report.when == "call" or not report.passed):
        if report.skipped:
            status, reason = "skipped", _skip_reason(report)
        else:
            status, reason = "error", _error_reason(call)
        options = item.config.stash[_OPTIONS_KEY]
        result = CaseResult(precision=options.precision, backend=options.backend, status=status, reason=reason, **ident)
        results[item.nodeid] = result
        item.user_properties.extend(junit_properties(result))
    return report


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ").splitlines()[0] if text else "skipped"


def _error_reason(call) -> str:
    exc = call.excinfo.value if call.excinfo is not None else None
    if exc is None:
        return "error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def pytest_collection_modifyitems(session, config, items):
    # Off CUDA, CPU throughput of the large towers (minutes per case) and of the other backends'
    # twins of the real architectures (their export or conversion) is opt-in: the default suite fits
    # a CPU job. Each group left out is named in the summary with its option.
    if not _runs_on_cuda(config.stash[_OPTIONS_KEY].device):
        for marker, option, _ in _CPU_OPT_IN:
            if config.getoption(option):
                continue
            left = [i for i in items if i.get_closest_marker("throughput") and i.get_closest_marker(marker)]
            if left:
                config.hook.pytest_deselected(items=left)
                ids = {id(i) for i in left}
                items[:] = [i for i in items if id(i) not in ids]
                config.stash[_LEFT_OUT_KEY].append((marker, len(left)))
    # Reproduction cases of one model run back to back, so its weights load once.
    repro = [i for i in items if _case_of(i) is not None]
    if repro:
        it = iter(sorted(repro, key=lambda i: _case_of(i).model))
        items[:] = [next(it) if _case_of(i) is not None else i for i in items]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workeroutput"):
        return  # the controller reports for all workers
    left = dict(config.stash.get(_LEFT_OUT_KEY, []))
    parts = [f"{left[marker]} {what}: include them with {option}" for marker, option, what in _CPU_OPT_IN if marker in left]
    if parts:
        terminalreporter.write_line(f"qaclip: left out CPU throughput cases: {'; '.join(parts)}")
    results = sorted(config.stash.get(_RESULTS_KEY, {}).values(), key=lambda r: (r.dataset, r.model))
    if not results:
        return
    terminalreporter.section("QA-CLIP reproduction report")
    terminalreporter.write_line(render_text(results))
    options = config.stash.get(_OPTIONS_KEY, None)
    if options is not None and options.report is not None:
        from qaclip_core.provenance import environment

        meta = {"precision": options.precision, "device": options.device, "backend": options.backend,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "batch_size": options.batch_size, "evaluate_any_split": options.evaluate_any_split}
        paths = write_reports(results, options.report, meta, environment=environment(_resolved_device(options.device)))
        for path in paths:
            terminalreporter.write_line(f"report written to {path}")
        _append_step_summary(paths[1])


def _append_step_summary(markdown: Path) -> None:
    """On GitHub Actions, add report.md to the job's summary page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown.read_text(encoding="utf-8") + "\n")


def pytest_unconfigure(config):
    # After pytest's own summary line: a run whose every reproduction case skipped evaluated nothing.
    if hasattr(config, "workeroutput"):
        return
    results = list(config.stash.get(_RESULTS_KEY, {}).values())
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if results and reporter is not None and all(r.status == "skipped" for r in results):
        reporter.write_line(
            f"qaclip: all {len(results)} selected reproduction cases were skipped (weights or data missing): "
            "nothing was evaluated", yellow=True, bold=True)
