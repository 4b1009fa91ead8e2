"""One pytest run's shared state: resolved options, data and checkpoints, the loaded model, the results."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from qaclip_core.errors import DownloadError
from qaclip_core.pretrained import cache_root
from qaclip_core.registry import ModelCard, get_card
from qaclip_harness.data.catalog import DatasetCard, DatasetMissingError, get_dataset
from qaclip_harness.errors import MissingDependencyError, UnsupportedError
from qaclip_harness.expected import ExpectedCase
from qaclip_harness.fetch.datasets import resolve_dataset
from qaclip_harness.files import OutputError
from qaclip_harness.gates.decisions import case_verdict
from qaclip_harness.report.tables import CaseResult
from qaclip_harness.suite.options import SuiteOptions
from qaclip_harness.suite.results import (
    case_provenance,
    failure_message,
    features_summary,
    junit_properties,
    recorded_notes,
    report_reason,
)
from qaclip_harness.suite.terminal import terminal_progress

if TYPE_CHECKING:
    from qaclip_harness.backends.base import Encoder

# Why a case may skip instead of fail: what it needs is absent on this machine. Anything else
# (a bug, a corrupt file, a broken import inside the package) is an error.
SKIPPABLE = (DatasetMissingError, DownloadError, MissingDependencyError, UnsupportedError)


class Suite:
    """Everything one pytest run shares between reproduction cases."""

    def __init__(self, config: pytest.Config, options: SuiteOptions, results: dict[str, CaseResult]):
        o = options
        self.options = o
        self.data_root = o.data_root
        self.checkpoint_dir = o.checkpoint_dir
        self.device = worker_device(config, o.device)
        self.precision = o.precision
        self.batch_size = o.batch_size
        self.num_workers = o.num_workers
        self.download = o.download
        self.compile = o.compile
        self.backend = o.backend
        self.results = results
        self.progress = terminal_progress(config)
        self._encoder_key: tuple | None = None
        self._encoder: Encoder | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="qaclip-suite-"))
        self._fixture_root: Path | None = None
        self._local_hub = None
        self._hf_served = False
        self._digests: dict[str, str] = {}
        from qaclip_harness.cache import Cache

        # features, decoded pixels and data identities of earlier runs (docs/caching.md)
        self.cache = Cache.at(cache_root(), o.cache_mode, verify=o.verify)

    # -- data -------------------------------------------------------------------------------
    def data_root_for(self, card: DatasetCard) -> Path:
        """The data root holding ``card``: generated into a temporary root for fixture datasets."""
        if not card.generator:
            return self.data_root
        if self._fixture_root is None:
            from qaclip_harness.suite.fixture_data import fixture_data

            self._fixture_root = fixture_data(self.cache.mode, cache_root(), self._tmp)
        return self._fixture_root

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_for(self, card: ModelCard) -> Path:
        """Local path of ``card``'s checkpoint, fetched through the hub code when absent."""
        from qaclip_harness.fetch.weights import fetch_weights

        if card.test_only:
            return self._fixture_checkpoint(card)
        return fetch_weights(card, download_root=self.checkpoint_dir)

    def _fixture_checkpoint(self, card: ModelCard) -> Path:
        from qaclip_core.pretrained import is_offline, verify_file
        from qaclip_harness.fetch.weights import fetch_weights
        from qaclip_harness.fixture import packaged_checkpoint

        if is_offline():
            # Offline (an air-gapped runner): the fixture ships inside the package, so it is read
            # from there, checked against its card's sha256; no server is started.
            native = get_card(card.original or card.name)
            packaged = packaged_checkpoint(native.name)
            verify_file(packaged, native.sha256, f"the packaged fixture checkpoint of {native.name}", sidecar=False)
            if card.adapter == "native":
                return packaged
            return self._fixture_converted(card)
        # Online, the fixture travels the real path: served over HTTP on 127.0.0.1, downloaded
        # into a fresh folder, checksummed, then loaded.
        hub = self._fixture_hub() if card.adapter == "native" else self._fixture_hub_with_copies()
        return fetch_weights(card, download_root=self._tmp / "fixture-checkpoints", endpoint=hub.endpoint)

    def _fixture_converted(self, card: ModelCard) -> Path:
        """The transformers-format copy of the fixture, converted into this run's folder (offline runs)."""
        from qaclip_harness.backends import backend

        backend(card.adapter).module.import_transformers()  # a missing transformers skips, naming the extra
        folder = self._tmp / "fixture-converted" / str(card.hub_repo)
        if not folder.is_dir():
            from qaclip_harness.fixture.hf import write_converted

            write_converted(self._tmp / "fixture-converted")
        return folder

    def _fixture_hub(self):
        if self._local_hub is None:
            from qaclip_harness.fetch.local_hub import serve_directory
            from qaclip_harness.fixture import MODELS

            served = self._tmp / "hub"
            for name, (_, checkpoint) in MODELS.items():  # every packaged fixture checkpoint, in its card's repo
                card = get_card(name)
                (served / card.hub_repo).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(checkpoint, served / card.hub_repo / card.hub_filename)
            self._local_hub = serve_directory(served)
        return self._local_hub

    def _fixture_hub_with_copies(self):
        """The fixture's hub, also serving its transformers-format copy (converted once, when first asked for)."""
        hub = self._fixture_hub()
        if not self._hf_served:
            from qaclip_harness.fixture.hf import write_converted

            write_converted(self._tmp / "hub")  # seconds (transformers' import): only for runs that need it
            self._hf_served = True
        return hub

    def encoder_for(self, card: ModelCard, backend: str | None = None):
        """The encoder of ``card`` on ``backend`` (default: --backend); the previous one is released so only one model is in memory."""
        from qaclip_harness.backends import load_encoder

        backend = backend or self.backend
        key = (card.name, self.device, self.precision, self.compile, backend)
        if key != self._encoder_key:
            self._encoder = None
            self._encoder_key = None
            path = self.checkpoint_for(card)
            self._encoder = load_encoder(
                card,
                path,
                device=self.device,
                precision=self.precision,
                compile=self.compile,
                backend_name=None if backend == "pytorch" else backend,
                cache_mode=self.cache.mode,
            )
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
        return {
            "dataset": case.dataset,
            "model": case.model,
            "kind": case.kind,
            "precision": self.precision,
            "backend": self.backend,
            "variant": case.variant,
        }

    def record(self, item: pytest.Item, result: CaseResult) -> CaseResult:
        """Keep ``result`` for the report and, for JUnit XML, as properties of ``item``."""
        self.results[item.nodeid] = result
        item.user_properties.extend(junit_properties(result))
        return result

    def checkpoint_digest(self, card: ModelCard) -> str | None:
        """sha256 of the card's weights (a pinned card's own value: its file was verified against it)."""
        from qaclip_harness.fetch.digests import sha256_of

        if card.name not in self._digests:
            self._digests[card.name] = card.sha256 or sha256_of(self.checkpoint_for(card))
        return self._digests[card.name]

    def case_cache(self, card: ModelCard, encoder):
        """The cache as ``card``'s evaluations use it (the fields naming the model, this run's settings)."""
        from qaclip_harness.eval.cached import CaseCache, model_fields

        fields = model_fields(
            encoder,
            self.checkpoint_digest(card),
            card,
            precision=self.precision,
            backend=self.backend,
            compile=self.compile,
        )
        return CaseCache(self.cache, fields)

    def run_case(self, case: ExpectedCase, item: pytest.Item) -> CaseResult:
        """Evaluate ``case``; skip (with a one-line reason) when data or weights are missing."""
        from qaclip_harness.data.splits import SplitMismatchError
        from qaclip_harness.eval.runner import evaluate_card

        ds = get_dataset(case.dataset)
        model_card = get_card(case.model)
        self.skip_unless_met(item, case)
        try:
            root = self.data_root_for(ds)
        except OutputError as e:  # the fixture data could not be written (a full disk): one line naming the folder
            self.record(item, CaseResult(status="error", reason=str(e), **self._base(case)))
            pytest.fail(f"{case.id}: {e}", pytrace=False)
        try:
            data = resolve_dataset(ds, root, download=self.download)  # fetched first: evaluation never downloads
            encoder = self.encoder_for(model_card)
        except SKIPPABLE as e:
            self.skip_or_fail(item, case, str(e).splitlines()[0])
        start = time.perf_counter()
        try:
            out = evaluate_card(
                encoder,
                data,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                progress=self.progress,
                split_policy="warn" if self.options.evaluate_any_split else "strict",
                cache=self.case_cache(model_card, encoder),
                resume_chunk=self.options.resume_chunk,
            )
        except SplitMismatchError as e:  # wrong data: stopped before any encoding, nothing to compare
            self.record(
                item,
                CaseResult(
                    status="error",
                    reason=str(e),
                    counts=e.check.found,
                    **self._base(case),
                    provenance={"split_check": e.check.as_dict()},
                ),
            )
            pytest.fail(f"{case.id}: {e}", pytrace=False)
        decision = case.gate_for(out.provenance.get("build"))
        # the qaclip_core model run eagerly on the CPU: the run whose feature drift reference-<model> bounds by the CPU noise
        on_cpu = (
            encoder.device.type == "cpu"
            and self.backend == "pytorch"
            and model_card.adapter == "native"
            and not self.compile
        )
        checks = case.check(out.metrics, self.precision, decision, on_cpu)
        verdict = case_verdict(case, out, self.precision, on_cpu)  # every decision, where the reference's exist
        # numbers written by `qaclip record`: whether this run's checkpoint and data are the ones they were recorded on
        recorded = recorded_notes(case, self.checkpoint_digest(model_card), out.provenance.get("data_fingerprint"))
        result = CaseResult.from_checks(
            device=str(encoder.device),
            measured=out.metrics,
            counts=out.counts,
            seconds=round(time.perf_counter() - start, 2),
            checks=checks,
            report_only=report_reason(case.report_only, encoder),
            gate=decision.source,
            gate_reason=decision.reason
            + (
                f"; near-ties (each metric's tolerance says which it excuses on this device): {case.near_tie_note()}"
                if case.near_ties
                else ""
            )
            + "".join(f"; {note}" for note in recorded),
            sources=case.source_deltas(out.metrics),
            checkpoint_sha256=self.checkpoint_digest(model_card),
            data_fingerprint=out.provenance.get("data_fingerprint"),
            provenance=case_provenance(out.provenance),
            features=features_summary(out.provenance.get("features"), self.cache.mode),
            decisions=verdict.as_dict(),
            **self._base(case),
        )
        if verdict.failed and result.status == "passed":  # totals within tolerance, but items flipped
            result = dataclasses.replace(result, status="failed")
        self.record(item, result)
        if result.status == "failed":
            pytest.fail(failure_message(case, result, checks, self.precision), pytrace=False)
        return result

    def close(self) -> None:
        """Stop the local hub and remove temporary files."""
        if self._local_hub is not None:
            self._local_hub.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def worker_device(config: pytest.Config, device: str) -> str:
    """Under pytest-xdist, worker gwN takes GPU N modulo the GPU count."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"


def resolved_device(device: str) -> str:
    """``auto`` made concrete: cuda where there is one, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def runs_on_cuda(device: str) -> bool:
    """Whether cases of this run execute on a CUDA device."""
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()
