"""The suite's options: each flag with its environment-variable twin, validated once at configure time."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qaclip_core.pretrained import cache_root
from qaclip_harness import options as opts
from qaclip_harness.data.loader import resolve_workers

OPTIONS = [
    # (flag, env var, default, help)
    (
        "--data-root",
        "QACLIP_DATA_ROOT",
        None,
        "Chinese-CLIP ${DATAPATH} (holding datasets/) or the datasets folder itself",
    ),
    (
        "--checkpoint-dir",
        "QACLIP_CHECKPOINT_DIR",
        None,
        "where checkpoints are looked for and downloaded (default: ~/.cache/qaclip)",
    ),
    ("--device", "QACLIP_DEVICE", "auto", "cpu, cuda, cuda:N or auto (CUDA when available)"),
    ("--precision", "QACLIP_PRECISION", "fp32", "fp32 (as the published numbers), fp16 or bf16"),
    ("--batch-size", "QACLIP_BATCH_SIZE", "64", "image batch size (halved automatically on out-of-memory)"),
    ("--num-workers", "QACLIP_NUM_WORKERS", "auto", "image-decoding threads (auto: one per core, at most 8)"),
    (
        "--resume-chunk",
        "QACLIP_RESUME_CHUNK",
        str(opts.RESUME_CHUNK_IMAGES),
        "images per chunk of image features stored as they are computed, so a killed run resumes (whole batches; 0: none)",
    ),
    ("--report", "QACLIP_REPORT", None, "folder for report.json, report.md and report.html"),
    (
        "--history",
        "QACLIP_HISTORY",
        None,
        (
            "folder of earlier runs (qaclip keep-run): report.html draws every number over them, and what moved since the "
            "last one goes to the job summary and history.md (needs --report)"
        ),
    ),
    (
        "--lock-file",
        "QACLIP_LOCK_FILE",
        None,
        "checksum lock file: the first verified download of each file is recorded there, later ones are checked against it",
    ),
    (
        "--backend",
        "QACLIP_BACKEND",
        "pytorch",
        "pytorch (each model's own) or onnx (exported into the cache, run by ONNX Runtime)",
    ),
    ("--golden-dir", "QACLIP_GOLDEN_DIR", None, "folder of golden probe features for the golden-<model> cases"),
    # exact selection and shards (qaclip_harness.suite.selection, .shard; docs/reproducing.md, docs/gpu-runner.md)
    (
        "--select-models",
        "QACLIP_SELECT_MODELS",
        None,
        (
            "run only the cases of these models: exact registry names or aliases, comma-separated (unlike -k, "
            "fixture-tiny does not select fixture-tiny-rn)"
        ),
    ),
    (
        "--select-datasets",
        "QACLIP_SELECT_DATASETS",
        None,
        "run only the reproduction cases on these datasets: exact registry names, comma-separated",
    ),
    (
        "--shard",
        "QACLIP_SHARD",
        None,
        (
            "K/N: run shard K of N of the selected cases (all cases of a model on one shard, balanced by estimated "
            "cost); qaclip merge-reports joins the shards' --report folders"
        ),
    ),
    (
        "--shard-durations",
        "QACLIP_SHARD_DURATIONS",
        None,
        "report.json (or its folder) of an earlier run: --shard balances by its case durations instead of the estimate",
    ),
]

FLAGS = [
    # (flag, env var, help): off unless given or the variable is set to something other than 0/false/no
    (
        "--download",
        "QACLIP_DOWNLOAD",
        "also download MUGE, Flickr30K-CN, label_cn.txt and ELEVATER_all.zip (the ELEVATER datasets) when missing",
    ),
    ("--compile", "QACLIP_COMPILE", "run the vision tower through torch.compile"),
    (
        "--require-data",
        "QACLIP_REQUIRE_DATA",
        "a reproduction case whose weights or data are missing fails instead of skipping (for runners that have them)",
    ),
    (
        "--evaluate-any-split",
        "QACLIP_EVALUATE_ANY_SPLIT",
        "evaluate data whose size is not the published split's anyway; the result is marked not comparable",
    ),
    (
        "--verify",
        "QACLIP_VERIFY",
        "hash every cached checkpoint, archive and dataset in full (ignore the .sha256 and data identity records)",
    ),
    (
        "--cpu-peer-throughput",
        "QACLIP_CPU_PEER_THROUGHPUT",
        "also run the CPU throughput twins of the real architectures from other backends (transformers, ONNX Runtime)",
    ),
    (
        "--cpu-large-throughput",
        "QACLIP_CPU_LARGE_THROUGHPUT",
        "also run the CPU throughput cases of the large towers (ViT-L/14, ViT-L/14@336, ViT-H/14, AltCLIP: minutes each)",
    ),
    ("--golden-save", "QACLIP_GOLDEN_SAVE", "golden-<model> cases record their probe features into --golden-dir"),
    (
        "--no-cache",
        "QACLIP_NO_CACHE",
        "recompute every feature and decode every image; read and write no cache (docs/caching.md)",
    ),
    (
        "--refresh-cache",
        "QACLIP_REFRESH_CACHE",
        "recompute every feature and decoded image and overwrite what the cache holds",
    ),
    (
        "--cache-read-only",
        "QACLIP_CACHE_READ_ONLY",
        "reuse cached features and pixels but write none (a pull request's job on a runner whose cache main fills)",
    ),
]

# (marker, option, what): CPU throughput groups that run only when asked for (always on CUDA)
CPU_OPT_IN = [
    (
        "large_model",
        "--cpu-large-throughput",
        "of the large towers (ViT-L/14, ViT-L/14@336, ViT-H/14, AltCLIP; minutes each on a CPU)",
    ),
    (
        "peer_backend",
        "--cpu-peer-throughput",
        "of the transformers and ONNX Runtime twins of the real architectures (conversion or export first)",
    ),
]
BACKEND_CHOICES = ("pytorch", "onnx")


def env_flag(name: str) -> bool:
    """Whether the variable ``name`` is set to something other than empty, 0, false or no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


GIVEN = "qaclip_given"  # the namespace attribute listing the flags given on the command line
ENV_OF: dict[str, str] = {flag: env for flag, env, *_ in OPTIONS + FLAGS}
REPORT_FILES = ("report.json", "report.md")


def _mark_given(namespace: argparse.Namespace, flag: str) -> None:
    setattr(namespace, GIVEN, {*(getattr(namespace, GIVEN, None) or ()), flag})


class _GivenValue(argparse.Action):
    """``store``, noting that the flag was given (its default may come from the environment)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.option_strings[0])


class _GivenFlag(argparse.Action):
    """``store_true``, noting that the flag was given."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        _mark_given(namespace, self.option_strings[0])


def add_options(parser: Any) -> None:
    """Register every option and flag on pytest's parser, defaulting to its environment variable."""
    group = parser.getgroup("qaclip", "QA-CLIP reproduction suite")
    for flag, env, default, help_text in OPTIONS:
        group.addoption(flag, action=_GivenValue, default=os.environ.get(env, default), help=f"{help_text} [env {env}]")
    for flag, env, help_text in FLAGS:
        group.addoption(flag, action=_GivenFlag, default=env_flag(env), help=f"{help_text} [env {env}=1]")


def option_source(option_namespace: Any) -> Callable[[str], str]:
    """``source(flag)``: the name the user set the value under, the flag or its environment variable.

    pytest takes an option's default from its variable, so an error about a value the user put in
    ``QACLIP_DEVICE`` must say ``QACLIP_DEVICE``, not ``--device``.
    """
    given = set(getattr(option_namespace, GIVEN, None) or ())

    def source(flag: str) -> str:
        env = ENV_OF.get(flag)
        if flag in given or env is None or not os.environ.get(env, "").strip():
            return flag
        return env

    return source


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
    report: Path | None
    lock_file: Path | None
    verify: bool
    evaluate_any_split: bool
    backend: str = "pytorch"
    history: Path | None = None
    cache_mode: str = "use"  # use, read-only, refresh, off (qaclip_harness.cache)
    golden_dir: Path | None = None
    golden_save: bool = False
    resume_chunk: int = opts.RESUME_CHUNK_IMAGES  # images a chunk (qaclip_harness.eval.resume); 0: no chunks


def cache_mode(no_cache: bool, refresh: bool, read_only: bool, source: Callable[[str], str] = lambda flag: flag) -> str:
    """The cache mode of the three cache flags; two that contradict each other are an OptionError."""
    given = [
        flag
        for flag, on in (("--no-cache", no_cache), ("--refresh-cache", refresh), ("--cache-read-only", read_only))
        if on
    ]
    if len(given) > 1:
        raise opts.OptionError(
            source(given[1]), "set", f"cannot be combined with {source(given[0])}: choose one cache mode"
        )
    return {"--no-cache": "off", "--refresh-cache": "refresh", "--cache-read-only": "read-only"}.get(
        given[0] if given else "", "use"
    )


def validated_options(
    get: Callable[[str], Any],
    worker_count: int = 1,
    is_worker: bool = False,
    source: Callable[[str], str] = lambda flag: flag,
) -> SuiteOptions:
    """Every suite option checked (``OptionError`` with the option and value), before any case runs.

    ``get`` reads one option by its flag (pytest's ``config.getoption``); ``source`` names where the
    value came from (:func:`option_source`), so an error names the flag or the variable the user set.
    Every output path (report, lock file, golden folder, ONNX export cache) is created and probed
    here: one that cannot be written fails now, not after the run.
    """
    workers = str(get("--num-workers"))
    try:
        num_workers = resolve_workers(workers, worker_count)
    except ValueError as e:
        raise opts.OptionError(source("--num-workers"), workers, str(e).split(", got ")[0]) from None
    backend = get("--backend")
    if backend not in BACKEND_CHOICES:
        raise opts.OptionError(source("--backend"), backend, f"expected one of {', '.join(BACKEND_CHOICES)}")
    golden_save = bool(get("--golden-save"))
    golden_check = opts.new_output_folder if golden_save else opts.folder
    mode = cache_mode(bool(get("--no-cache")), bool(get("--refresh-cache")), bool(get("--cache-read-only")), source)
    # the package cache, for every backend: features, pixels and the fixture data are written there (use,
    # refresh), read (read-only), and checkpoints downloaded there by default (every mode)
    opts.package_cache(write=mode in ("use", "refresh"))
    opts.cache_budget_gb()
    if backend == "onnx":  # exports are written into the package cache
        opts.cache_folder("onnx")
    return SuiteOptions(
        data_root=opts.folder(get("--data-root"), source("--data-root")) or cache_root() / "data",
        checkpoint_dir=opts.folder(get("--checkpoint-dir"), source("--checkpoint-dir")) or cache_root() / "checkpoints",
        device=opts.device(get("--device"), source("--device")),
        precision=opts.precision(get("--precision"), source("--precision")),
        batch_size=opts.positive_int(get("--batch-size"), source("--batch-size")),
        num_workers=num_workers,
        download=bool(get("--download")),
        compile=bool(get("--compile")),
        require_data=bool(get("--require-data")),
        report=opts.new_output_folder(get("--report"), source("--report"), will_write=REPORT_FILES)
        if not is_worker
        else None,
        lock_file=_resolved(opts.output_file(get("--lock-file"), source("--lock-file"))),
        verify=bool(get("--verify")),
        evaluate_any_split=bool(get("--evaluate-any-split")),
        backend=backend,
        history=opts.folder(get("--history"), source("--history")),
        cache_mode=mode,
        golden_dir=golden_check(get("--golden-dir"), source("--golden-dir")),
        golden_save=golden_save,
        resume_chunk=opts.count(get("--resume-chunk"), source("--resume-chunk")),
    )


def _resolved(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None
