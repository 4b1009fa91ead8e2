"""A campaign of bad inputs against the CLI and the suite, each run in a subprocess.

    python tools/bad_inputs.py [--jobs 2] [--only SUBSTRING ...] [--keep DIR]

Every fault builds its inputs in a folder of its own (from the embedded fixture: the tiny
checkpoint and the generated Shapes-CN data), runs ``python -m qaclip_harness eval ...`` or
``pytest benchmarks ...`` on them with no network (``HF_HUB_OFFLINE=1``), and is judged:

- exit code: the one expected (2 for a CLI user error, 4 for a suite usage error, 1 for a
  failed or errored case; 0 where the input is odd but valid);
- no traceback: a user error is one message, not a stack;
- the message names the culprit (the file, option, key or line given in ``needles``);
- nothing left behind: no partial downloads, staging folders, temporary or half-written files.

It prints one row per fault and ends with ``N bad inputs, M handled cleanly``; the exit status is
1 unless every fault was handled cleanly.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lmdb  # noqa: E402
import torch  # noqa: E402

from qaclip_harness.fixture import ARCH, CHECKPOINT  # noqa: E402
from qaclip_harness.fixture.shapes import write_shapes_dataset  # noqa: E402
from tests.hostile import HOSTILE, hostile_report, markdown_problems, markup_problems  # noqa: E402

TRACEBACK = "Traceback (most recent call last)"
SERVERS: list = []  # local hubs the faults' builds started, closed at the end
HF_MODEL = "hf-fixture-tiny"  # the fixture's transformers-format copy
LEFTOVER_PATTERNS = ("*.incomplete", "*.tmp", "*.tmpdir", ".*.tmp-*", ".*.extract-*", "*.part", ".qaclip-write-test-*")


@dataclass
class Fault:
    """One bad input: how to build it, how to run it, what a clean handling looks like."""

    name: str
    surface: str  # "cli" (qaclip, run in the fault's folder), "suite" (pytest benchmarks) or "project" (pytest --qaclip there)
    build: Callable[[Path], tuple[list[str], dict[str, str]]]  # -> (argv after python, extra env)
    codes: tuple[int, ...]
    needles: tuple[str, ...] = ()
    must_not_exist: tuple[str, ...] = ()  # paths (relative to the fault's folder) that must not appear
    read_only: bool = False  # runs where mode bits bind: a fresh interpreter without root's overriding capabilities
    forbidden: tuple[str, ...] = ()  # text the output must not hold (a message blaming the wrong thing)
    verify: Callable[[Path], list[str]] | None = None  # problems in what the run wrote into the fault's folder
    file_size_limit: int | None = None  # RLIMIT_FSIZE of the child (bytes): a disk that fills up
    # a fresh interpreter even under --isolation fork: a forked child holds this tool's modules, which the
    # feature cache's key counts (every loaded module from outside a distribution), so it would miss what a
    # fresh run stored
    fresh: bool = False


@dataclass
class Outcome:
    """What happened when a fault ran."""

    fault: Fault
    code: int
    traceback: bool
    missing_needles: list[str]
    leftovers: list[str]
    seconds: float
    output: str = field(repr=False, default="")
    problems: list[str] = field(default_factory=list)  # forbidden text in the output, what verify found

    @property
    def clean(self) -> bool:
        """Expected exit code, no traceback, the culprit named, nothing left behind, nothing else wrong."""
        return (
            self.code in self.fault.codes
            and not self.traceback
            and not self.missing_needles
            and not self.leftovers
            and not self.problems
        )


# ------------------------------------------------------------------------------------------------
# building blocks


class Base:
    """The pristine inputs every fault copies from."""

    def __init__(self, root: Path):
        # Children are forked from this process: its tensor work must not start OpenMP's thread
        # pool, which a forked child cannot use (it would hang on the pool's lock).
        torch.set_num_threads(1)
        self.root = root
        self.data = root / "data"
        (self.data / "datasets").mkdir(parents=True)  # the ${DATAPATH}/datasets/<Dataset> layout
        write_shapes_dataset(self.data)
        _write_elevater(self.data)
        self.state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
        self._converted = None

    def converted(self) -> Path:
        """The fixture in transformers format (hf-fixture-tiny's folder), converted once."""
        if self._converted is None:
            from qaclip_core.registry import get_card
            from qaclip_harness.fixture.hf import write_converted

            write_converted(self.root / "converted")
            self._converted = self.root / "converted" / get_card(HF_MODEL).hub_repo
        return self._converted

    def data_copy(self, d: Path) -> Path:
        target = d / "data"
        shutil.copytree(self.data, target)
        return target

    def checkpoint_with(self, d: Path, name: str, edit: Callable[[dict], None]) -> Path:
        state = {"state_dict": {k: v.clone() for k, v in self.state["state_dict"].items()}}
        edit(state["state_dict"])
        path = d / name
        torch.save(state, path)
        return path


def _cli(data: Path, *args: str, checkpoint: Path = CHECKPOINT, dataset: str = "fixture-shapes") -> list[str]:
    return [
        "-m",
        "qaclip_harness",
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        dataset,
        "--data-root",
        str(data),
        "--quiet",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        *args,
    ]


def _suite(*args: str) -> list[str]:
    return ["-m", "pytest", str(REPO / "benchmarks"), "-p", "no:cacheprovider", "-q", "-m", "not throughput", *args]


def _lmdb(data: Path) -> Path:
    return data / "datasets" / "Shapes-CN" / "lmdb" / "test" / "imgs"


def _texts(data: Path) -> Path:
    return data / "datasets" / "Shapes-CN" / "test_texts.jsonl"


def _cls(data: Path) -> Path:
    return data / "datasets" / "shapes-cls"


def _elevater(data: Path) -> Path:
    return data / "datasets" / "kitti-distance"


def _write_elevater(data: Path) -> None:
    """KITTI-distance in Chinese-CLIP's ELEVATER layout (test/0..3, label_cn.txt), from four Shapes-CN classes."""
    cls, target = _cls(data), _elevater(data)
    names = (cls / "label_cn.txt").read_text(encoding="utf-8").splitlines()[:4]
    for i, folder in enumerate(sorted((cls / "test").iterdir())[:4]):
        shutil.copytree(folder, target / "test" / str(i))
    (target / "label_cn.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")


def _elevater_images(data: Path) -> int:
    return sum(1 for f in (_elevater(data) / "test").rglob("*") if f.is_file())


def _edit_lmdb(path: Path, edit: Callable[[lmdb.Transaction], None]) -> None:
    env = lmdb.open(str(path), map_size=1 << 28)
    try:
        with env.begin(write=True) as txn:
            edit(txn)
    finally:
        env.close()


def _first_key(path: Path) -> bytes:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return next(k for k in txn.cursor().iternext(keys=True, values=False) if k != b"num_images")
    finally:
        env.close()


def _rewrite_first_text(data: Path, edit: Callable[[dict], object]) -> None:
    path = _texts(data)
    lines = path.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    out = edit(first)
    lines[0] = out if isinstance(out, str) else json.dumps(first, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _expected_for(d: Path, dataset: str, kind: str, split: str, values: dict, body: str | None = None) -> Path:
    folder = d / "expected"
    folder.mkdir()
    if body is None:
        groups = sorted({k.split("_")[0] for k in values})
        tol = "".join(f"    {g}: {{abs: 0.5, why: campaign}}\n" for g in groups)
        body = (
            f"dataset: {dataset}\nkind: {kind}\nsplit: {split}\nsources: {{campaign: made up}}\n"
            f"tolerance:\n  fp32:\n{tol}models:\n  fixture-tiny:\n    gate: campaign\n    campaign: {json.dumps(values)}\n"
        )
    (folder / f"{dataset}.yaml").write_text(body, encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------
# the faults


def faults(base: Base) -> list[Fault]:
    """Every fault of the campaign."""
    F = Fault
    out: list[Fault] = []

    def cli(name, args_fn, codes=(2,), needles=(), must_not_exist=(), env=None, **more):
        def build(d: Path):
            data = base.data_copy(d)
            return args_fn(d, data), dict(env or {})

        out.append(F(name, "cli", build, codes, needles, must_not_exist, **more))

    # options, checked when parsed
    cli("--batch-size 0", lambda d, data: _cli(data, "--batch-size", "0"), needles=("--batch-size",))
    cli("--batch-size -1", lambda d, data: _cli(data, "--batch-size", "-1"), needles=("--batch-size",))
    cli("--text-batch-size 0", lambda d, data: _cli(data, "--text-batch-size", "0"), needles=("--text-batch-size",))
    cli(
        "--device cuda (no GPU)", lambda d, data: _cli(data, "--device", "cuda"), needles=("--device", "no CUDA device")
    )
    cli("--device cuda:7", lambda d, data: _cli(data, "--device", "cuda:7"), needles=("cuda:7",))
    cli("--device tpu", lambda d, data: _cli(data, "--device", "tpu"), needles=("--device",))
    cli("--arch without @", lambda d, data: _cli(data, "--arch", "ViT-B-16"), needles=("VISION@TEXT",))
    cli("--arch unknown tower", lambda d, data: _cli(data, "--arch", "ViT-Q-9@RBT3-chinese"), needles=("ViT-Q-9",))
    cli("--num-workers -3", lambda d, data: _cli(data, "--num-workers", "-3"), needles=("--num-workers",))
    cli("--precision fp8", lambda d, data: _cli(data, "--precision", "fp8"), needles=("fp8",))

    def a_file(d: Path) -> Path:
        f = d / "a-file"
        f.write_text("not a folder")
        return f

    cli(
        "--checkpoint-dir is a file",
        lambda d, data: [
            "-m",
            "qaclip_harness",
            "eval",
            "--model",
            "fixture-tiny",
            "--dataset",
            "fixture-shapes",
            "--data-root",
            str(data),
            "--checkpoint-dir",
            str(a_file(d)),
        ],
        needles=("--checkpoint-dir",),
    )
    cli("--data-root is a file", lambda d, data: _cli(a_file(d)), needles=("--data-root",))
    cli(
        "--dump-predictions is a file",
        lambda d, data: _cli(data, "--dump-predictions", str(a_file(d))),
        needles=("--dump-predictions",),
    )
    cli("--lock-file is a folder", lambda d, data: _cli(data, "--lock-file", str(d)), needles=("--lock-file",))
    cli(
        "--arch with --model",
        lambda d, data: [
            "-m",
            "qaclip_harness",
            "eval",
            "--model",
            "fixture-tiny",
            "--arch",
            ARCH,
            "--dataset",
            "fixture-shapes",
            "--data-root",
            str(data),
        ],
        needles=("--arch applies to --checkpoint only",),
    )
    cli(
        "unknown model name",
        lambda d, data: [
            "-m",
            "qaclip_harness",
            "eval",
            "--model",
            "ViT-B-99",
            "--dataset",
            "fixture-shapes",
            "--data-root",
            str(data),
        ],
        needles=("ViT-B-99", "available models"),
    )
    cli("unknown dataset name", lambda d, data: _cli(data, dataset="flickr8k"), needles=("flickr8k", "known datasets"))

    # checkpoints
    cli("checkpoint missing", lambda d, data: _cli(data, checkpoint=d / "absent.pt"), needles=("absent.pt",))

    def empty(d):
        (d / "empty.pt").write_bytes(b"")
        return d / "empty.pt"

    def truncated(d):
        raw = CHECKPOINT.read_bytes()
        (d / "cut.pt").write_bytes(raw[: len(raw) // 2])
        return d / "cut.pt"

    def random_bytes(d):
        (d / "random.pt").write_bytes(os.urandom(50_000))
        return d / "random.pt"

    def html(d):
        (d / "page.pt").write_text("<html><body>404 Not Found</body></html>")
        return d / "page.pt"

    def evil(d):
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > PWNED",))

        torch.save({"state_dict": {"a": torch.zeros(1)}, "x": Evil()}, d / "evil.pt")
        return d / "evil.pt"

    def bare_list(d):
        torch.save([1, 2, 3], d / "list.pt")
        return d / "list.pt"

    def odd_keys(d):
        torch.save({"state_dict": {"visual.x": torch.zeros(2), "bert.y": torch.zeros(2)}}, d / "odd.pt")
        return d / "odd.pt"

    def nan(d):
        return base.checkpoint_with(
            d, "nan.pt", lambda sd: sd[next(k for k in sd if k.endswith("attn.in_proj_weight"))].fill_(float("nan"))
        )

    def int8(d):
        def edit(sd):
            key = next(k for k in sd if k.endswith("visual.proj"))
            sd[key] = sd[key].float().mul(100).to(torch.int8)

        return base.checkpoint_with(d, "int8.pt", edit)

    def missing_key(d):
        return base.checkpoint_with(d, "missing.pt", lambda sd: sd.pop(next(k for k in sd if "ln_post" in k)))

    cli("checkpoint empty (0 bytes)", lambda d, data: _cli(data, checkpoint=empty(d)), needles=("empty.pt", "empty"))
    cli("checkpoint truncated", lambda d, data: _cli(data, checkpoint=truncated(d)), needles=("cut.pt",))
    cli("checkpoint random bytes", lambda d, data: _cli(data, checkpoint=random_bytes(d)), needles=("random.pt",))
    cli("checkpoint is an HTML page", lambda d, data: _cli(data, checkpoint=html(d)), needles=("page.pt",))
    cli(
        "checkpoint with pickled code",
        lambda d, data: _cli(data, checkpoint=evil(d)),
        needles=("evil.pt",),
        must_not_exist=("PWNED",),
    )
    cli(
        "checkpoint is a list",
        lambda d, data: _cli(data, checkpoint=bare_list(d)),
        needles=("list.pt", "expected a dict"),
    )
    cli(
        "checkpoint architecture unknown",
        lambda d, data: _cli(data, checkpoint=odd_keys(d)),
        needles=("odd.pt", "--arch"),
    )
    cli(
        "checkpoint of another architecture",
        lambda d, data: _cli(data, "--arch", "RN50@RBT3-chinese"),
        needles=("fixture-tiny.pt", "does not fit architecture"),
    )
    cli("checkpoint with NaN weights", lambda d, data: _cli(data, checkpoint=nan(d)), needles=("nan.pt", "NaN"))
    cli("checkpoint with int8 weights", lambda d, data: _cli(data, checkpoint=int8(d)), needles=("int8.pt", "int8"))
    cli(
        "checkpoint missing a key",
        lambda d, data: _cli(data, checkpoint=missing_key(d)),
        needles=("missing.pt", "ln_post"),
    )

    # retrieval data
    def damage_lmdb(how):
        def fn(d, data):
            path = _lmdb(data)
            mdb = path / "data.mdb"
            if how == "truncate":
                with open(mdb, "r+b") as f:
                    f.truncate(mdb.stat().st_size // 2)
            elif how == "empty":
                mdb.write_bytes(b"")
            elif how == "garbage":
                with open(mdb, "r+b") as f:
                    f.seek(2 * 4096)
                    f.write(os.urandom(4096))
            elif how == "remove":
                shutil.rmtree(path.parent.parent)
            return _cli(data)

        return fn

    cli("LMDB data.mdb truncated", damage_lmdb("truncate"), needles=("data.mdb", "Shapes-CN"))
    cli("LMDB data.mdb empty", damage_lmdb("empty"), needles=("data.mdb",))
    cli("LMDB garbage page", damage_lmdb("garbage"), needles=("lmdb/test/imgs",))
    cli("LMDB folder missing", damage_lmdb("remove"), needles=("lmdb/test/imgs missing",))

    def lmdb_value(value: bytes, key: bytes | None = None):
        def fn(d, data):
            path = _lmdb(data)
            k = key or _first_key(path)
            _edit_lmdb(path, lambda txn: txn.put(k, value))
            return _cli(data)

        return fn

    cli("LMDB value not base64", lmdb_value("不是base64".encode()), needles=("base64",))
    cli(
        "LMDB value not an image",
        lmdb_value(base64.urlsafe_b64encode(b"just some bytes, not a PNG")),
        needles=("cannot be decoded as an image",),
    )
    cli("LMDB num_images wrong", lmdb_value(b"7", key=b"num_images"), needles=("num_images",))
    cli("LMDB non-decimal key", lmdb_value(base64.urlsafe_b64encode(b"x"), key=b"img-1"), needles=("img-1",))

    def texts(edit):
        def fn(d, data):
            _rewrite_first_text(data, edit)
            return _cli(data)

        return fn

    cli("jsonl missing", lambda d, data: (_texts(data).unlink(), _cli(data))[1], needles=("test_texts.jsonl missing",))
    cli(
        "jsonl line not JSON",
        texts(lambda r: '{"text_id": 1, "text": "x", '),
        needles=("test_texts.jsonl:1", "invalid JSON"),
    )
    cli("jsonl field missing", texts(lambda r: r.pop("image_ids")), needles=("test_texts.jsonl:1", "image_ids"))
    cli(
        "jsonl text_id not an integer",
        texts(lambda r: r.update(text_id="seven")),
        needles=("test_texts.jsonl:1", "text_id"),
    )
    cli("jsonl unknown image id", texts(lambda r: r.update(image_ids=[987654321])), needles=("987654321",))
    cli(
        "jsonl not UTF-8",
        lambda d, data: (_texts(data).write_bytes(b'{"text_id": 1, "text": "\xff\xfe"}\n'), _cli(data))[1],
        needles=("test_texts.jsonl:1", "UTF-8"),
    )
    cli(
        "jsonl empty",
        lambda d, data: (_texts(data).write_text(""), _cli(data))[1],
        needles=("test_texts.jsonl", "empty"),
    )

    def dup_text_id(d, data):
        lines = _texts(data).read_text(encoding="utf-8").splitlines()
        second = json.loads(lines[1])
        second["text_id"] = json.loads(lines[0])["text_id"]
        lines[1] = json.dumps(second, ensure_ascii=False)
        _texts(data).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return _cli(data)

    cli("jsonl duplicate text_id", dup_text_id, needles=("test_texts.jsonl:2", "duplicate text_id"))

    # zero-shot data
    def zs(edit):
        def fn(d, data):
            edit(_cls(data))
            return _cli(data, dataset="fixture-shapes-cls")

        return fn

    def drop_label(cls: Path):
        lines = (cls / "label_cn.txt").read_text(encoding="utf-8").splitlines()
        (cls / "label_cn.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")

    def empty_class(cls: Path):
        first = sorted((cls / "test").iterdir())[0]
        for f in first.iterdir():
            f.unlink()

    def corrupt_image(cls: Path):
        first = sorted(sorted((cls / "test").iterdir())[0].iterdir())[0]
        first.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

    cli("label file one line short", zs(drop_label), needles=("label_cn.txt", "class folders"))
    cli("label file missing", zs(lambda cls: (cls / "label_cn.txt").unlink()), needles=("label_cn.txt",))
    cli(
        "label file not UTF-8",
        zs(lambda cls: (cls / "label_cn.txt").write_bytes(b"\xff\xfe\x00bad\n")),
        needles=("label_cn.txt", "UTF-8"),
    )
    cli("class folder empty", zs(empty_class), needles=("test",))
    cli(
        "class image corrupt", zs(corrupt_image), needles=("cannot read image", "circle_000.")
    )  # the first file, PNG or JPEG
    cli("split folder missing", zs(lambda cls: shutil.rmtree(cls / "test")), needles=("test/<class folders> missing",))

    # ELEVATER data (Chinese-CLIP's zero-shot layout)
    def el(edit, *args):
        def fn(d, data):
            edit(_elevater(data))
            return _cli(data, *(a(d) if callable(a) else a for a in args), dataset="kitti-distance")

        return fn

    def padded_ids(root: Path):  # 000..003 where at most 10 classes take 0..3
        for folder in sorted((root / "test").iterdir(), reverse=True):
            folder.rename(folder.with_name(f"{int(folder.name):03d}"))

    def el_empty_class(root: Path):
        for f in (root / "test" / "2").iterdir():
            f.unlink()

    def el_index(text: str):
        return lambda root: (root / "index.json").write_text(text)

    cli(
        "ELEVATER label file one line short",
        el(drop_label),
        needles=("label_cn.txt", "4 class folders", "names 3 classes"),
    )
    cli(
        "ELEVATER class folders not the ids",
        el(padded_ids),
        needles=("kitti-distance/test", "0 to 3", "unexpected ['000'"),
    )
    cli("ELEVATER class folder empty", el(el_empty_class), needles=("kitti-distance/test/2", "no image files"))
    cli(
        "ELEVATER dataset without a card",
        lambda d, data: _cli(data, dataset="food-101"),
        needles=("food-101", "known datasets"),
    )
    cli(
        "ELEVATER dataset missing, no --download",
        el(shutil.rmtree),
        needles=("KITTI-distance not found", "ELEVATER_all.zip", "--download", "kitti-distance.zip"),
    )
    cli(
        "ELEVATER index.json not a list",
        el(el_index('{"order": [1, 0]}'), "--dump-predictions", lambda d: str(d / "out")),
        needles=("index.json", "JSON list"),
        must_not_exist=("out",),
    )
    cli(
        "ELEVATER index.json out of range",
        el(el_index("[0, 1, 9999]"), "--dump-predictions", lambda d: str(d / "out")),
        codes=(1,),
        needles=("index.json", "9999", "the metrics above were computed"),
    )

    # a late failure must not lose the metrics
    def unwritable_predictions(d, data):
        out_dir = d / "preds"
        out_dir.mkdir()
        (out_dir / "test_predictions.jsonl").mkdir()  # a folder where a prediction file must go
        return _cli(data, "--dump-predictions", str(out_dir), "--json")

    cli(
        "predictions cannot be written",
        unwritable_predictions,
        codes=(1,),
        needles=('"t2i_r1"', "the metrics above were computed"),
    )

    # ---- round three: outputs probed before the work, named by what the user set --------------
    def read_only_dir(d: Path) -> Path:
        ro = d / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro

    def ro_cli(name, args_fn, needles):
        def build(d: Path):
            data = base.data_copy(d)
            return args_fn(d, data), {}

        out.append(F(name, "cli", build, (2,), needles, (), read_only=True))

    def export_args(out_path: str) -> list[str]:
        return ["-m", "qaclip_harness", "export-onnx", "--checkpoint", str(CHECKPOINT), "--out", out_path]

    cli("export-onnx --out is a file", lambda d, data: export_args(str(a_file(d))), needles=("--out", "is a file"))
    ro_cli(
        "export-onnx --out read-only",
        lambda d, data: export_args(str(read_only_dir(d) / "onnx")),
        needles=("--out", "Permission denied"),
    )

    def calibrate_args(d: Path, out_path: str, *extra: str) -> list[str]:
        return [
            "-m",
            "qaclip_harness",
            "calibrate",
            "--out",
            out_path,
            "--expected-dir",
            str(REPO / "expected"),
            "--case",
            "muge-qa-clip-rn50",
            "--data-root",
            str(d / "no-data"),
            "--checkpoint-dir",
            str(d / "no-ckpt"),
            "--device",
            "cpu",
            *extra,
        ]

    cli("calibrate --out is a folder", lambda d, data: calibrate_args(d, str(d)), needles=("--out", "is a folder"))
    ro_cli(
        "calibrate --out read-only",
        lambda d, data: calibrate_args(d, str(read_only_dir(d) / "c.yaml")),
        needles=("--out", "not writable", "Permission denied"),
    )
    cli(
        "calibrate, every case skipped",
        lambda d, data: calibrate_args(d, str(d / "cal.yaml")),
        codes=(1,),
        needles=("were skipped", "nothing was calibrated", "--allow-empty"),
        must_not_exist=("cal.yaml",),
    )
    ro_cli(
        "--lock-file read-only",
        lambda d, data: _cli(data, "--lock-file", str(read_only_dir(d) / "lock.json")),
        needles=("--lock-file", "not writable", "Permission denied"),
    )
    cli(
        "QACLIP_LOCK_FILE under a file",
        lambda d, data: _cli(data),
        needles=("QACLIP_LOCK_FILE", "is a file"),
        env={"QACLIP_LOCK_FILE": "__FILE__/lock.json"},
    )
    cli(
        "QACLIP_CACHE a file, --backend onnx",
        lambda d, data: _cli(data, "--backend", "onnx"),
        needles=("QACLIP_CACHE", "is a file"),
        env={"QACLIP_CACHE": "__FILE__"},
    )

    # ---- transformers-format folders ------------------------------------------------------------
    def hf(edit):
        def fn(d, data):
            source = base.converted()
            folder = d / "ckpts" / source.name
            shutil.copytree(source, folder)
            edit(folder)
            return [
                "-m",
                "qaclip_harness",
                "eval",
                "--model",
                HF_MODEL,
                "--checkpoint-dir",
                str(d / "ckpts"),
                "--dataset",
                "fixture-shapes",
                "--data-root",
                str(data),
                "--quiet",
                "--device",
                "cpu",
                "--num-workers",
                "0",
            ]

        return fn

    def wider_text(folder: Path):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config["text_config"]["hidden_size"] *= 2
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")

    def cut_weights(folder: Path):
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])

    def nan_weights(folder: Path):
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        weights = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    def pickled_code(folder: Path):
        from safetensors.torch import load_file

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > PWNED",))

        weights = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save({**weights, "x": Evil()}, folder / "pytorch_model.bin")

    cli("hf folder: config.json hidden_size wrong", hf(wider_text), needles=("model.safetensors", "config.json"))
    cli(
        "hf folder: model.safetensors truncated",
        hf(cut_weights),
        needles=("model.safetensors", "not a readable safetensors"),
    )
    cli(
        "hf folder: model.safetensors garbage",
        hf(lambda f: (f / "model.safetensors").write_bytes(os.urandom(5000))),
        needles=("model.safetensors", "not a readable safetensors"),
    )
    cli("hf folder: all-NaN weights", hf(nan_weights), needles=("model.safetensors", "NaN"))
    cli(
        "hf folder: pytorch_model.bin with pickled code",
        hf(pickled_code),
        needles=("pytorch_model.bin", "refused"),
        must_not_exist=("PWNED",),
    )

    # ---- silent wrong results, text --------------------------------------------------------------
    def loop_link(d, data):
        root = _elevater(data)
        (root / "test" / "0" / "loop").symlink_to(".", target_is_directory=True)
        return _cli(data, "--json", dataset="kitti-distance")

    cli(
        "ELEVATER class folder with a link loop",
        loop_link,
        codes=(0,),
        needles=(
            "directory link(s) not followed",
            "kitti-distance/test/0/loop",
            f'"num_images": {_elevater_images(base.data)}',
        ),
    )
    cli(
        "jsonl caption with a lone surrogate",
        texts(lambda r: json.dumps(dict(r, text="a\ud800b"))),
        needles=("test_texts.jsonl:1", "lone surrogate"),
    )

    # ---- compare-reports --------------------------------------------------------------------------
    good = {
        "meta": {"precision": "fp32"},
        "environment": {"torch": "x"},
        "results": [
            {
                "dataset": "muge",
                "model": "m",
                "status": "passed",
                "measured": {"t2i_r1": 1.0},
                "provenance": {"build": "a"},
            }
        ],
    }

    def report_pair(edit, *extra):
        def fn(d, data):
            import copy

            (d / "a.json").write_text(json.dumps(good), encoding="utf-8")
            doc = copy.deepcopy(good)
            edit(doc)
            (d / "b.json").write_text(json.dumps(doc), encoding="utf-8")
            return ["-m", "qaclip_harness", "compare-reports", str(d / "a.json"), str(d / "b.json"), *extra]

        return fn

    for name, edit, key in [
        ("a result that is a number", lambda doc: doc["results"].append(3), "results[1]"),
        ("dataset missing", lambda doc: doc["results"][0].pop("dataset"), "'dataset' is a required property"),
        ("meta a list", lambda doc: doc.update(meta=[1]), "meta:"),
        ("measured a list", lambda doc: doc["results"][0].update(measured=[1.0]), "results[0].measured"),
        ("dataset a list", lambda doc: doc["results"][0].update(dataset=["muge"]), "results[0].dataset"),
        ("environment a string", lambda doc: doc.update(environment="torch x"), "environment:"),
        ("provenance a string", lambda doc: doc["results"][0].update(provenance="a"), "results[0].provenance"),
    ]:
        cli(f"compare-reports: {name}", report_pair(edit), needles=("b.json", key))
    cli(
        "compare-reports --json: measured a list",
        report_pair(lambda doc: doc["results"][0].update(measured=[1.0]), "--json"),
        needles=("b.json", "results[0].measured"),
    )

    # the suite
    def suite(name, build, codes, needles=(), must_not_exist=(), read_only=False, **more):
        out.append(F(name, "suite", build, codes, needles, must_not_exist, read_only, **more))

    suite(
        "suite --batch-size 0", lambda d: (_suite("--collect-only", "--batch-size", "0"), {}), (4,), ("--batch-size",)
    )
    suite("suite --device cuda:7", lambda d: (_suite("--collect-only", "--device", "cuda:7"), {}), (4,), ("cuda:7",))
    suite("suite --precision fp8", lambda d: (_suite("--collect-only", "--precision", "fp8"), {}), (4,), ("fp8",))
    suite(
        "suite --checkpoint-dir is a file",
        lambda d: (_suite("--collect-only", "--checkpoint-dir", str(a_file(d))), {}),
        (4,),
        ("--checkpoint-dir",),
    )
    suite(
        "suite --data-root is a file",
        lambda d: (_suite("--collect-only", "--data-root", str(a_file(d))), {}),
        (4,),
        ("--data-root",),
    )
    suite(
        "suite --report is a file",
        lambda d: (_suite("--collect-only", "--report", str(a_file(d))), {}),
        (4,),
        ("--report",),
    )
    suite(
        "QACLIP_EXPECTED_DIR missing",
        lambda d: (_suite("--collect-only"), {"QACLIP_EXPECTED_DIR": str(d / "nope")}),
        (4,),
        ("QACLIP_EXPECTED_DIR",),
    )

    def expected_text(text: str):
        def build(d: Path):
            folder = d / "expected"
            folder.mkdir()
            (folder / "bad.yaml").write_text(text, encoding="utf-8")
            return _suite("--collect-only"), {"QACLIP_EXPECTED_DIR": str(folder)}

        return build

    suite("expected file empty", expected_text(""), (4,), ("bad.yaml", "empty"))
    suite("expected file not YAML", expected_text("models: [unclosed"), (4,), ("bad.yaml", "not valid YAML"))
    suite(
        "expected tolerance abs: lots",
        expected_text(
            "dataset: muge\nkind: retrieval\nsplit: valid\nsources: {a: b}\ntolerance: {fp32: {t2i: {abs: lots, why: w}}}\n"
            "models: {qa-clip-rn50: {gate: a, a: {t2i_r1: 1}}}\n"
        ),
        (4,),
        ("bad.yaml", "tolerance.fp32.t2i.abs"),
    )

    def offline_fixture(d: Path):
        return (
            _suite(
                "-k", "fixture-shapes-fixture-tiny or fixture-shapes-cls-fixture-tiny", "--report", str(d / "report")
            ),
            {"QACLIP_CACHE": str(d / "cache")},
        )

    suite(
        "HF_HUB_OFFLINE=1 still runs the fixture", offline_fixture, (0,), ("4 passed",)
    )  # ViT and ResNet, two cases each

    def suite_lmdb_truncated(d: Path):
        data = base.data_copy(d)
        # the fixture model on a Flickr30K-CN folder whose image LMDB was cut short
        shutil.move(str(data / "datasets" / "Shapes-CN"), str(data / "datasets" / "Flickr30k-CN"))
        mdb = data / "datasets" / "Flickr30k-CN" / "lmdb" / "test" / "imgs" / "data.mdb"
        with open(mdb, "r+b") as f:
            f.truncate(mdb.stat().st_size // 2)
        exp = _expected_for(d, "flickr30k-cn", "retrieval", "test", {"t2i_r1": 90.0})
        return (
            _suite(
                "-k",
                "flickr30k-cn-fixture-tiny",
                "--data-root",
                str(data),
                "--report",
                str(d / "report"),
            ),
            {"QACLIP_EXPECTED_DIR": str(exp)},
        )

    suite("suite case on a truncated LMDB", suite_lmdb_truncated, (1,), ("data.mdb", "1 failed"))

    def suite_elevater_label_short(d: Path):
        data = base.data_copy(d)
        drop_label(_elevater(data))
        exp = _expected_for(d, "kitti-distance", "zeroshot", "test", {"top1": 50.0})
        return (
            _suite("-k", "kitti-distance-fixture-tiny", "--data-root", str(data), "--report", str(d / "report")),
            {"QACLIP_EXPECTED_DIR": str(exp)},
        )

    suite(
        "suite ELEVATER case, label file short",
        suite_elevater_label_short,
        (1,),
        ("kitti-distance/test", "label_cn.txt", "1 failed"),
    )

    # ---- round three: the suite's outputs, probed at configure time ------------------------------
    def report_json_folder(d: Path):
        (d / "r" / "report.json").mkdir(parents=True)
        return _suite("--collect-only", "--report", str(d / "r")), {}

    suite("suite --report/report.json is a folder", report_json_folder, (4,), ("--report", "report.json is a folder"))
    suite(
        "suite --golden-dir is a file, --golden-save",
        lambda d: (_suite("--collect-only", "--golden-dir", str(a_file(d)), "--golden-save"), {}),
        (4,),
        ("--golden-dir", "is a file"),
    )
    suite(
        "suite QACLIP_GOLDEN_DIR is a file",
        lambda d: (_suite("--collect-only"), {"QACLIP_GOLDEN_DIR": str(a_file(d))}),
        (4,),
        ("QACLIP_GOLDEN_DIR", "is a file"),
    )
    suite(
        "suite --golden-save into a read-only folder",
        lambda d: (_suite("--collect-only", "--golden-save", "--golden-dir", str(read_only_dir(d) / "goldens")), {}),
        (4,),
        ("--golden-dir", "Permission denied"),
        read_only=True,
    )
    suite(
        "suite QACLIP_CACHE a file, --backend onnx",
        lambda d: (_suite("--collect-only", "--backend", "onnx"), {"QACLIP_CACHE": str(a_file(d))}),
        (4,),
        ("QACLIP_CACHE", "is a file"),
    )
    suite(
        "suite --lock-file in a read-only folder",
        lambda d: (_suite("--collect-only", "--lock-file", str(read_only_dir(d) / "lock.json")), {}),
        (4,),
        ("--lock-file", "not writable", "Permission denied"),
        read_only=True,
    )
    suite(
        "suite QACLIP_DEVICE=cuda:7",
        lambda d: (_suite("--collect-only"), {"QACLIP_DEVICE": "cuda:7"}),
        (4,),
        ("QACLIP_DEVICE 'cuda:7'",),
    )

    def golden_store(edit):
        def build(d: Path):
            store = d / "goldens"
            store.mkdir()
            (store / "fixture-tiny-fp32-cpu.pt").write_bytes(b"features recorded earlier")
            edit(store)
            return (
                _suite(
                    "--select-models",
                    "fixture-tiny",
                    "-k",
                    "golden-",
                    "--golden-dir",
                    str(store),
                    "--device",
                    "cpu",
                ),
                {},
            )

        return build

    suite(
        "suite golden store without its manifest",
        golden_store(lambda store: None),
        (1,),
        ("manifest.json is missing", "1 failed"),
    )
    suite(
        "suite golden manifest entry is a list",
        golden_store(
            lambda store: (store / "manifest.json").write_text(
                json.dumps({"format": 1, "goldens": {"fixture-tiny-fp32-cpu.pt": [1, 2]}}), encoding="utf-8"
            )
        ),
        (1,),
        ("goldens.fixture-tiny-fp32-cpu.pt", "got a list", "1 failed"),
    )
    round_four(base, cli, suite, a_file, read_only_dir)
    return out + project_faults(base) + shard_faults()


# ------------------------------------------------------------------------------------------------
# exact selection, --shard and qaclip merge-reports (issue 32)


def _shard_report(folder: Path, index: int, count: int, selection: list[str], ran: list[str], **meta: object) -> Path:
    """A shard's report folder as the suite writes it (report.json with meta.shard), for the merge faults."""
    folder.mkdir(parents=True, exist_ok=True)
    results = [
        {"dataset": name.rsplit("-fixture-tiny", 1)[0], "model": "fixture-tiny", "status": "passed"} for name in ran
    ]
    shard = {"index": index, "count": count, "selection": selection, "expected_sha256": "a" * 64, **meta}
    doc = {"meta": {"shard": shard}, "environment": {"git": {"commit": "c" * 40}}, "results": results}
    (folder / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


def shard_faults() -> list[Fault]:
    """Bad selection and shard options of the suite, and shard folders qaclip merge-reports refuses."""
    out: list[Fault] = []
    sel = ["fixture-shapes-fixture-tiny", "fixture-shapes-cls-fixture-tiny"]

    def suite(name: str, args: list[str], needles: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        out.append(Fault(name, "suite", lambda d: (_suite("--collect-only", *args), dict(env or {})), (4,), needles))

    suite("suite --select-models unknown", ["--select-models", "fixture-tiny,fixture-tin"], ("'fixture-tin'", "known"))
    suite(
        "suite QACLIP_SELECT_DATASETS unknown",
        [],
        ("QACLIP_SELECT_DATASETS", "'flickr'"),
        {"QACLIP_SELECT_DATASETS": "flickr"},
    )
    suite("suite --shard 0/2", ["--shard", "0/2"], ("--shard", "from 1 to N"))
    suite("suite --shard 3/2", ["--shard", "3/2"], ("--shard", "3/2"))
    suite("suite QACLIP_SHARD half", [], ("QACLIP_SHARD", "expected K/N"), {"QACLIP_SHARD": "half"})
    suite("suite --shard-durations missing", ["--shard", "1/2", "--shard-durations", "nope.json"], ("nope.json",))
    suite("suite --shard-durations without --shard", ["--shard-durations", "x.json"], ("applies to --shard",))
    suite("suite --resume-chunk -1", ["--resume-chunk", "-1"], ("--resume-chunk", "'-1'", "integer >= 0"))
    suite(
        "suite QACLIP_RESUME_CHUNK abc",
        [],
        ("QACLIP_RESUME_CHUNK", "'abc'", "integer >= 0"),
        {"QACLIP_RESUME_CHUNK": "abc"},
    )

    def merge(name: str, make: Callable[[Path], list[Path]], needles: tuple[str, ...]) -> None:
        def build(d: Path) -> tuple[list[str], dict[str, str]]:
            folders = make(d)
            return ["-m", "qaclip_harness", "merge-reports", *map(str, folders), "--out", str(d / "merged")], {}

        out.append(Fault(name, "cli", build, (2,), needles, ("merged/report.json",)))

    merge("merge-reports no such folder", lambda d: [d / "nope"], ("nope", "no such folder"))
    merge(
        "merge-reports a report that is not a shard's",
        lambda d: [_plain_report(d / "plain")],
        ("plain", "no meta.shard", "--shard K/N"),
    )
    merge(
        "merge-reports a shard missing",
        lambda d: [_shard_report(d / "s1", 1, 2, sel, sel[:1])],
        ("ran nowhere", "2/2 not given", sel[1]),
    )
    merge(
        "merge-reports a shard given twice",
        lambda d: [
            _shard_report(d / "s1", 1, 2, sel, sel[:1]),
            _shard_report(d / "s2", 2, 2, sel, sel[1:]),
            _shard_report(d / "again", 2, 2, sel, sel[1:]),
        ],
        ("shard 2/2 given twice", "ran twice", sel[1]),
    )
    merge(
        "merge-reports shards of different selections",
        lambda d: [_shard_report(d / "s1", 1, 2, sel, sel[:1]), _shard_report(d / "s2", 2, 2, sel[1:], sel[1:])],
        ("different selections", sel[0]),
    )
    merge(
        "merge-reports shards of different tolerance files",
        lambda d: [
            _shard_report(d / "s1", 1, 2, sel, sel[:1]),
            _shard_report(d / "s2", 2, 2, sel, sel[1:], expected_sha256="b" * 64),
        ],
        ("different tolerance files",),
    )
    merge(
        "merge-reports report.json is not JSON",
        lambda d: [_broken_report(d / "bad")],
        ("report.json",),
    )
    return out


def _plain_report(folder: Path) -> Path:
    folder.mkdir(parents=True)
    doc = {"meta": {}, "results": [{"dataset": "fixture-shapes", "model": "fixture-tiny", "status": "passed"}]}
    (folder / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


def _broken_report(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text('{"meta": {"shard": ', encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------
# a project's own cards, dataset cards, [tool.qaclip] table and backends (issue 31)

ENCODERS = '''
import torch
import qaclip_core
from qaclip_harness.backends.native import load as native_load

class Wrong:
    """A backend whose encoder breaks one promise of the interface."""

    def __init__(self, inner, fault):
        self.inner, self.fault = inner, fault
        self.name, self.device, self.dtype = inner.name, inner.device, inner.dtype
        self.preprocess, self.tokenize = inner.preprocess, inner.tokenize
        if fault != "no_encode_text":
            self.encode_text = inner.encode_text

    def encode_image(self, images):
        out = self.inner.encode_image(images)
        if self.fault == "shape":
            return out[:, None, :]
        if self.fault == "nan":
            return out * float("nan")
        if self.fault == "int":
            return out.long()
        return out

def _make(fault):
    def load(card, checkpoint, device="cpu", precision="fp32", compile=False):
        return Wrong(native_load(card, checkpoint, device=device, precision=precision), fault)
    return load

shape, nan, as_int, no_encode_text = _make("shape"), _make("nan"), _make("int"), _make("no_encode_text")
not_callable = 42
'''


def _project(d: Path, table: str | None = None, cards: str | None = None, datasets: str | None = None) -> None:
    """A project in the fault's folder: pyproject.toml with [tool.qaclip], card files, the fixture's weights as its own."""
    data = d / "data"
    if not data.exists():
        data.mkdir()
    shutil.copyfile(CHECKPOINT, d / "mine.pt")
    (d / "badenc.py").write_text(ENCODERS, encoding="utf-8")
    if table is None:
        table = '[tool.qaclip]\ncards = "cards.yaml"\ndatasets = "datasets.yaml"\n'
    (d / "pyproject.toml").write_text(f"[project]\nname = 'bad'\nversion = '0'\n\n{table}", encoding="utf-8")
    if cards is None:
        cards = "models:\n  - {name: mine, arch: ViT-fixture@BERT-fixture, checkpoint: mine.pt}\n"
    (d / "cards.yaml").write_text(cards, encoding="utf-8")
    if datasets is None:
        datasets = "datasets:\n  - {name: mine-valid, kind: retrieval, path: data/datasets/Shapes-CN, split: test}\n"
    (d / "datasets.yaml").write_text(datasets, encoding="utf-8")


def _eval_mine(*args: str, model: str = "mine", dataset: str = "mine-valid") -> list[str]:
    return ["-m", "qaclip_harness", "eval", "--model", model, "--dataset", dataset, "--device", "cpu", "--quiet", *args]


def _card(**keys: str) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in {"name": "mine", "checkpoint": "mine.pt", **keys}.items())
    return f"models:\n  - {{{body}}}\n"


def project_faults(base: Base) -> list[Fault]:
    """A project's [tool.qaclip] table, model cards, dataset cards and backends, through qaclip eval and pytest --qaclip."""
    out: list[Fault] = []

    def project(name, codes, needles, surface="cli", argv=None, env=None, **files):
        def build(d: Path):
            base.data_copy(d)
            _project(d, **files)
            return (argv or _eval_mine()), dict(env or {})

        out.append(Fault(name, surface, build, codes, needles))

    # the table
    project(
        "project: [tool.qaclip] unknown key",
        (2,),
        ("pyproject.toml", "[tool.qaclip] has unknown key(s) 'card'"),
        table='[tool.qaclip]\ncard = "cards.yaml"\n',
    )
    project(
        "project: [tool.qaclip] cards file missing",
        (2,),
        ("pyproject.toml", "[tool.qaclip] cards: 'nope.yaml' does not exist"),
        table='[tool.qaclip]\ncards = "nope.yaml"\n',
    )
    project(
        "project: [tool.qaclip] cards a number",
        (2,),
        ("pyproject.toml", "[tool.qaclip] cards: expected a path or a list of paths"),
        table="[tool.qaclip]\ncards = 3\n",
    )
    project("project: pyproject.toml not TOML", (2,), ("pyproject.toml", "is not valid TOML"), table="[tool.qaclip\n")
    project(
        "project: QACLIP_CARDS names a missing file",
        (2,),
        ("QACLIP_CARDS", "'gone.yaml' does not exist"),
        env={"QACLIP_CARDS": "gone.yaml"},
    )
    # model cards
    project(
        "project: card name of a built-in",
        (2,),
        ("cards.yaml", "'qa-clip-rn50' is already taken by", "[tool.qaclip] cards"),
        cards=_card(name="qa-clip-rn50", arch="RN50@RBT3-chinese"),
    )
    project(
        "project: card unknown key",
        (2,),
        ("cards.yaml", "unknown keys ['chekpoint']"),
        cards=_card(arch="ViT-fixture@BERT-fixture", chekpoint="x.pt"),
    )
    project("project: card unknown tower", (2,), ("cards.yaml", "ViT-Q-9"), cards=_card(arch="ViT-Q-9@BERT-fixture"))
    project(
        "project: card not YAML",
        (2,),
        ("cards.yaml", "is not valid YAML at line"),
        cards="models: [ {name: mine,\n",
    )
    project(
        "project: card checkpoint missing",
        (2,),
        ("model 'mine'", "absent.pt not found"),
        cards=_card(arch="ViT-fixture@BERT-fixture", checkpoint="absent.pt"),
    )
    project(
        "project: card sha256 of another file",
        (2,),
        ("mine.pt", "not the checkpoint the card describes"),
        cards=_card(arch="ViT-fixture@BERT-fixture", sha256="a" * 64),
    )
    # dataset cards
    project(
        "project: dataset name of a built-in",
        (2,),
        ("datasets.yaml", "dataset 'muge': the name is already taken"),
        datasets="datasets:\n  - {name: muge, kind: retrieval, path: data}\n",
    )
    project(
        "project: dataset unknown key",
        (2,),
        ("datasets.yaml", "unknown keys ['splt']"),
        datasets="datasets:\n  - {name: mine-valid, kind: retrieval, path: data, splt: test}\n",
    )
    project(
        "project: zeroshot dataset without labels",
        (2,),
        ("datasets.yaml", "labels must name the label file"),
        datasets="datasets:\n  - {name: mine-valid, kind: zeroshot, path: data/datasets/shapes-cls}\n",
    )
    project(
        "project: dataset folder missing",
        (2,),
        ("the dataset card", "datasets.yaml", "names this folder"),
        datasets="datasets:\n  - {name: mine-valid, kind: retrieval, path: nowhere, split: test}\n",
    )

    def bad_templates(d: Path):
        base.data_copy(d)
        cls = "data/datasets/shapes-cls"
        _project(
            d,
            datasets=f"datasets:\n  - {{name: mine-cls, kind: zeroshot, path: {cls}, labels: {cls}/label_cn.txt, "
            "templates: prompts.yaml}\n",
        )
        (d / "prompts.yaml").write_text("- '一张照片'\n", encoding="utf-8")
        return _eval_mine(dataset="mine-cls"), {}

    out.append(
        Fault(
            "project: templates without a placeholder",
            "cli",
            bad_templates,
            (2,),
            ("prompts.yaml", "exactly one {} for the class name"),
        )
    )
    # backends: module:attribute references, the interface, entry points
    for fault, needle in (
        ("shape", "encode_image returned shape [2, 1, 64] for 2 inputs, expected [2, D]"),
        ("nan", "encode_image returned NaN or infinite values"),
        ("as_int", "encode_image returned dtype torch.int64"),
        ("no_encode_text", "has no encode_text"),
    ):
        project(
            f"project: backend {fault}",
            (2,),
            (f"backend 'badenc:{fault}'", "for model 'mine' does not satisfy the Encoder interface", needle),
            cards=_card(backend=f"'badenc:{fault}'", arch="ViT-fixture@BERT-fixture"),
        )
    project(
        "project: backend module missing",
        (2,),
        ("backend 'acme_missing:load'", "no module named 'acme_missing'"),
        cards=_card(backend="'acme_missing:load'"),
    )
    project(
        "project: backend not callable",
        (2,),
        ("backend 'badenc:not_callable'", "is a int; expected a callable"),
        cards=_card(backend="'badenc:not_callable'"),
    )
    project(
        "project: backend name not registered",
        (2,),
        ("unknown backend 'acme'", "qaclip.backends"),
        cards=_card(backend="acme"),
    )

    def entry_point(value: str):
        def build(d: Path):
            base.data_copy(d)
            _project(d, cards=_card(backend="broken-ep", arch="ViT-fixture@BERT-fixture"))
            info = d / "acme_broken-1.0.dist-info"  # an installed package whose entry point is wrong
            info.mkdir()
            (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n", encoding="utf-8")
            (info / "entry_points.txt").write_text(f"[qaclip.backends]\nbroken-ep = {value}\n", encoding="utf-8")
            return _eval_mine(), {}

        return build

    out.append(
        Fault(
            "project: entry point names a missing module",
            "cli",
            entry_point("acme_gone.encoder:load"),
            (2,),
            ("backend 'broken-ep'", "entry point qaclip.backends:broken-ep", "of acme-broken 1.0", "acme_gone"),
        )
    )
    out.append(
        Fault(
            "project: entry point's encoder has NaN",
            "cli",
            entry_point("badenc:nan"),
            (2,),
            ("backend 'broken-ep'", "does not satisfy the Encoder interface", "NaN"),
        )
    )
    # pytest --qaclip in the project: configure-time errors (exit 4) naming the file and key
    pytest_argv = ["-m", "pytest", "--qaclip", "--collect-only", "-q", "-p", "no:cacheprovider"]
    project(
        "project: pytest --qaclip, [tool.qaclip] unknown key",
        (4,),
        ("pyproject.toml", "[tool.qaclip] has unknown key(s) 'expect'"),
        surface="project",
        argv=pytest_argv,
        table='[tool.qaclip]\nexpect = "x"\n',
    )
    project(
        "project: pytest --qaclip, card clash",
        (4,),
        ("cards.yaml", "'fixture-tiny' is already taken by"),
        surface="project",
        argv=pytest_argv,
        cards=_card(name="fixture-tiny", arch="ViT-fixture@BERT-fixture"),
    )
    project(
        "project: pytest --qaclip-datasets missing",
        (4,),
        ("--qaclip-datasets", "'nope.yaml' does not exist"),
        surface="project",
        argv=[*pytest_argv, "--qaclip-datasets", "nope.yaml"],
    )

    def expected(body: str):
        def build(d: Path):
            base.data_copy(d)
            _project(d, table='[tool.qaclip]\ncards = "cards.yaml"\ndatasets = "datasets.yaml"\nexpected = "exp"\n')
            (d / "exp").mkdir()
            (d / "exp" / "mine.yaml").write_text(body, encoding="utf-8")
            return pytest_argv, {}

        return build

    head = "dataset: mine-valid\nkind: retrieval\nsplit: {split}\nsources: {{r: measured}}\ntolerance: {{fp32: {{t2i: {{abs: 1, why: w}}}}}}\n"
    out.append(
        Fault(
            "project: expected file names a model without a card",
            "project",
            expected(head.format(split="test") + "models: {ghost: {gate: r, r: {t2i_r1: 50}}}\n"),
            (4,),
            ("mine.yaml", "models.ghost: no model card of that name"),
        )
    )
    out.append(
        Fault(
            "project: expected file of another split",
            "project",
            expected(head.format(split="valid") + "models: {mine: {gate: r, r: {t2i_r1: 50}}}\n"),
            (4,),
            ("mine.yaml", "split 'valid' is not the published split of mine-valid"),
        )
    )
    # qaclip record
    project(
        "project: record --runs unknown",
        (2,),
        ("--runs", "fp64"),
        argv=[
            "-m",
            "qaclip_harness",
            "record",
            "--model",
            "mine",
            "--dataset",
            "mine-valid",
            "--out",
            "exp",
            "--runs",
            "fp32,fp64",
        ],
    )

    def recorded_twice(d: Path):
        base.data_copy(d)
        _project(d)
        (d / "exp").mkdir()
        (d / "exp" / "mine-valid-mine.yaml").write_text("recorded before\n", encoding="utf-8")
        return ["-m", "qaclip_harness", "record", "--model", "mine", "--dataset", "mine-valid", "--out", "exp"], {}

    out.append(
        Fault(
            "project: record over a recorded file",
            "cli",
            recorded_twice,
            (2,),
            ("mine-valid-mine.yaml exists", "--force"),
        )
    )
    return out


def round_four(base: Base, cli: Callable, suite: Callable, a_file: Callable, read_only_dir: Callable) -> None:
    """Round four: markup from report.json and cache records, keep-run names, the cache's settings, fetch debris."""

    # ---- markup read from a report reaches no page, summary or table --------------------------------
    def history_args(d: Path, *extra: str) -> list[str]:
        # one run: its page shows every field (tests/harness/test_report_escaping.py draws two, with what moved)
        run = hostile_report(d / "current", time="2026-05-02T00:00:00")
        return ["-m", "qaclip_harness", "history", str(run), *extra]

    def page_problems(d: Path) -> list[str]:
        page = markup_problems((d / "page.html").read_text(encoding="utf-8"))
        return page + markdown_problems((d / "history.md").read_text(encoding="utf-8"), expect="")

    cli(
        "history --html of a report.json full of markup",
        lambda d, data: history_args(d, "--html", str(d / "page.html"), "--markdown", str(d / "history.md")),
        codes=(0,),
        needles=("written: ", "page.html"),
        verify=page_problems,
    )
    cli(
        "history --html FILE is a folder",
        lambda d, data: history_args(d, "--html", str(d)),
        needles=("--html", "is a folder"),
    )

    def hostile_cache_records(d: Path):
        """One run fills the cache; its feature records' ``run`` is then markup: the next run's report.md shows it."""
        selection = ["-k", "test_retrieval and fixture-shapes-fixture-tiny and not rn"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
        env.update(HF_HUB_OFFLINE="1", QACLIP_CACHE=str(d / "qaclip-cache"), OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # as the fault's run
        first = subprocess.run(
            [sys.executable, *_suite(*selection)], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
        if first.returncode != 0:
            raise RuntimeError(f"the run filling the cache failed:\n{first.stdout[-2000:]}")
        for record in (d / "qaclip-cache" / "features").glob("*.json"):
            doc = json.loads(record.read_text(encoding="utf-8"))
            doc["run"] = f"{HOSTILE[0]} | {HOSTILE[5]}"
            record.write_text(json.dumps(doc), encoding="utf-8")
        return _suite(*selection, "--report", str(d / "report")), {}

    def report_md_problems(d: Path) -> list[str]:
        text = (d / "report" / "report.md").read_text(encoding="utf-8")
        found = markdown_problems(text)
        return found + ([] if "features reused from" in text else ["report.md does not say the features were reused"])

    suite(
        "suite report.md from a cache record whose run is markup",
        hostile_cache_records,
        (0,),
        ("1 passed",),
        verify=report_md_problems,
        fresh=True,
    )

    # ---- keep-run: --name is one folder name, STORE a folder --------------------------------------
    def keep(d: Path, name: str, store: Path | None = None) -> list[str]:
        hostile_report(d / "run")
        return ["-m", "qaclip_harness", "keep-run", str(d / "run"), str(store or d / "h" / "store"), "--name", name]

    def nothing_kept(d: Path) -> list[str]:
        store = d / "h" / "store"
        kept = sorted(str(p.relative_to(d)) for p in store.rglob("*")) if store.is_dir() else []
        outside = sorted(str(p.relative_to(d)) for p in d.rglob("x") if "run" not in p.parts)
        return [f"kept: {p}" for p in kept + outside]

    for name in ("../../x", "../../../x", "a/b", "/abs/x", ""):
        cli(
            f"keep-run --name {name!r}",
            lambda d, data, name=name: keep(d, name),
            needles=("--name",),
            verify=nothing_kept,
        )
    cli(
        "keep-run STORE is a file",
        lambda d, data: keep(d, "main-1", a_file(d)),
        needles=("STORE", "is a file"),
    )

    # ---- the cache's settings: one line at configure, for every backend ---------------------------
    suite(
        "suite QACLIP_CACHE a file (default backend)",
        lambda d: (_suite("--collect-only"), {"QACLIP_CACHE": str(a_file(d))}),
        (4,),
        ("QACLIP_CACHE", "is a file"),
    )
    suite(
        "suite QACLIP_CACHE under a read-only folder",
        lambda d: (_suite("--collect-only"), {"QACLIP_CACHE": str(read_only_dir(d) / "cache")}),
        (4,),
        ("QACLIP_CACHE", "Permission denied"),
        read_only=True,
    )
    for value in ("abc", "-1", "nan"):
        suite(
            f"suite QACLIP_CACHE_BUDGET_GB={value}",
            lambda d, value=value: (_suite("--collect-only"), {"QACLIP_CACHE_BUDGET_GB": value}),
            (4,),
            ("QACLIP_CACHE_BUDGET_GB", repr(value)),
        )

    # ---- debris: a full disk, a killed fetch, a server that ignores Range ---------------------------
    suite(
        "suite fixture data on a full disk",
        lambda d: (_suite("-k", "test_retrieval and fixture-shapes-fixture-tiny and not rn"), {}),
        (1,),
        ("cannot write the fixture data into", "fixture-data", "1 failed"),
        forbidden=("lmdb.Error",),
        file_size_limit=100_000,
    )

    def elevater_hub(d: Path, **faults) -> str:
        from qaclip_harness.fetch.local_hub import serve_directory
        from tests.datasets_util import elevater_all_zip

        archive = d / "hub" / "datasets" / "OFA-Sys" / "chinese-clip-eval" / "ELEVATER_all.zip"
        elevater_all_zip({"kitti-distance": _elevater(base.data)}, archive)
        hub = serve_directory(d / "hub", **faults)
        SERVERS.append(hub)
        return hub.endpoint

    online = {"HF_HUB_OFFLINE": "0"}

    def killed_fetch(d: Path, data: Path) -> list[str]:
        """A fetch of kitti-distance killed with kill -9 while it unpacks; the next run (this fault) fetches again."""
        shutil.rmtree(_elevater(data))
        endpoint = elevater_hub(d, chunk_delay=30.0)  # the first range request hangs: time to kill it
        env = {**os.environ, **online, "QACLIP_HF_ENDPOINT": endpoint}
        code = (
            "import sys; from qaclip_harness.data.catalog import get_dataset\n"
            "from qaclip_harness.fetch.datasets import ensure_dataset\n"
            "ensure_dataset(get_dataset('kitti-distance'), sys.argv[1], download=True)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", code, str(data)], cwd=REPO, env=env)
        deadline = time.monotonic() + 120
        while not list((data / "datasets").glob(".kitti-distance.extract-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        child.kill()  # SIGKILL: no clean-up runs
        child.wait()
        if not list((data / "datasets").glob(f".kitti-distance.extract-{child.pid}")):
            raise RuntimeError("the killed fetch left no staging folder: the fault was not set up")
        SERVERS[-1].set_faults()
        return _cli(data, "--download", "--json", dataset="kitti-distance")

    cli(
        "ELEVATER fetch killed with kill -9, run again",
        killed_fetch,
        codes=(0,),
        needles=('"top1"',),
        env={**online, "QACLIP_HF_ENDPOINT": "__ENDPOINT__"},
    )

    def ignored_range(d: Path, data: Path) -> list[str]:
        shutil.rmtree(_elevater(data))
        elevater_hub(d, ignore_range=True)
        return _cli(data, "--download", dataset="kitti-distance")

    cli(
        "ELEVATER server ignores Range",
        ignored_range,
        needles=("ignored the byte range", "ELEVATER_all.zip", "download ELEVATER_all.zip whole"),
        must_not_exist=("data/datasets/kitti-distance",),
        forbidden=("damaged", "Bad magic number"),
        env={**online, "QACLIP_HF_ENDPOINT": "__ENDPOINT__"},
    )


# ------------------------------------------------------------------------------------------------
# running


def _leftovers(d: Path, fault: Fault) -> list[str]:
    found = {str(p.relative_to(d)) for pattern in LEFTOVER_PATTERNS for p in d.rglob(pattern)}
    found |= {rel for rel in fault.must_not_exist if (d / rel).exists() or (REPO / rel).exists()}
    return sorted(found)


def _limit_file_size(limit: int | None) -> None:
    """RLIMIT_FSIZE for this process (a disk that fills up); SIGXFSZ ignored, as Python's own startup does."""
    if limit is not None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _forked_child(argv: list[str], cwd: Path, env: dict[str, str], out: Path, file_size_limit: int | None) -> None:
    """In a forked child: ``python -m <module> <args>`` emulated, output to ``out``; never returns."""
    import runpy
    import traceback

    code = 1
    try:
        _limit_file_size(file_size_limit)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, encoding="utf-8", closefd=False)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        assert argv[0] == "-m", argv
        sys.argv = [argv[1], *argv[2:]]
        try:
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 -- what the interpreter would print for an uncaught exception
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
    finally:
        os._exit(code)


def _prepare(fault: Fault, workdir: Path) -> tuple[Path, list[str], Path, dict[str, str]]:
    """Build the fault's inputs in a folder of their own; returns (folder, argv, cwd, env)."""
    d = workdir / "".join(c if c.isalnum() else "-" for c in fault.name).strip("-")
    d.mkdir(parents=True)
    argv, extra = fault.build(d)
    if any("__ENDPOINT__" in v for v in extra.values()):  # the local hub the build started
        extra = {k: v.replace("__ENDPOINT__", SERVERS[-1].endpoint) for k, v in extra.items()}
    if any("__FILE__" in v for v in extra.values()):  # a variable naming a file where a folder must be
        (d / "a-file").write_text("not a folder")
        extra = {k: v.replace("__FILE__", str(d / "a-file")) for k, v in extra.items()}
    if fault.read_only:
        d.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
            "QACLIP_CACHE": str(d / "qaclip-cache"),
        }
    )
    env.update(extra)
    return d, argv, (d if fault.surface in ("cli", "project") else REPO), env


# Popen objects stay referenced: one that is garbage-collected while its process runs is reaped by
# subprocess's own clean-up, and the waitpid below would find no child.
_CHILDREN: list[subprocess.Popen] = []


def _without_root_overrides() -> None:
    """Before exec: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (root then obeys mode bits)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _drop_root_overrides_now() -> None:
    """In a forked child: clear CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from this process (capset)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    mask = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
    data[0].effective &= mask
    data[0].permitted &= mask
    data[0].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _start(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    out: Path,
    isolation: str,
    read_only: bool = False,
    file_size_limit: int | None = None,
) -> int:
    """Start one child: forked from this process (torch already imported: fast) or a fresh interpreter.

    ``read_only``: the child runs without root's capabilities that override mode bits, so that a
    folder of mode 0o555 is read-only for it as for any user.
    """
    drop = read_only and os.geteuid() == 0
    if isolation == "fork":
        pid = os.fork()
        if pid == 0:
            if drop:
                _drop_root_overrides_now()
            _forked_child(argv, cwd, env, out, file_size_limit)
        return pid

    def before_exec() -> None:
        if drop:
            _without_root_overrides()
        _limit_file_size(file_size_limit)

    with open(out, "wb") as f:
        child = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            # run_all starts children from its one thread (see its docstring), so no lock is held at the fork
            preexec_fn=before_exec if drop or file_size_limit else None,  # noqa: PLW1509
        )
    _CHILDREN.append(child)
    return child.pid


def run_all(
    selected: Sequence[Fault], workdir: Path, jobs: int = 2, isolation: str = "fork", timeout: float = 900.0
) -> list[Outcome]:
    """Run the faults, ``jobs`` children at a time, from this (single) thread; outcomes in input order.

    Children are started from the main thread only: forking while other threads hold locks
    (an import in progress) could hang a child.
    """
    outcomes: dict[int, Outcome] = {}
    pending = list(enumerate(selected))
    running: dict[int, tuple] = {}  # pid -> (index, fault, folder, output file, start)
    while pending or running:
        while pending and len(running) < max(1, jobs):
            index, fault = pending.pop(0)
            d, argv, cwd, env = _prepare(fault, workdir)
            out = workdir / f"{d.name}.out"
            running[
                _start(
                    argv, cwd, env, out, "exec" if fault.fresh else isolation, fault.read_only, fault.file_size_limit
                )
            ] = (
                index,
                fault,
                d,
                out,
                time.perf_counter(),
            )
        finished = []
        for pid, (index, fault, d, out, t0) in running.items():
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.perf_counter() - t0 > timeout:
                os.kill(pid, 9)
                done, status = os.waitpid(pid, 0)
            if done:
                finished.append(pid)
                text = out.read_text(encoding="utf-8", errors="replace")
                problems = [f"the output says {f!r}" for f in fault.forbidden if f in text]
                if fault.verify is not None:
                    try:
                        problems += fault.verify(d)
                    except Exception as e:  # noqa: BLE001 -- a check that cannot read what it checks: a problem
                        problems.append(f"verify failed: {type(e).__name__}: {e}")
                outcomes[index] = Outcome(
                    fault,
                    os.waitstatus_to_exitcode(status),
                    TRACEBACK in text,
                    [n for n in fault.needles if n not in text],
                    _leftovers(d, fault),
                    time.perf_counter() - t0,
                    text,
                    problems,
                )
        for pid in finished:
            del running[pid]
        if not finished:
            time.sleep(0.05)
    return [outcomes[i] for i in range(len(selected))]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the campaign and print the table; exit 0 only if every fault was handled cleanly."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="faults run at once (default 2)")
    p.add_argument("--only", action="append", default=[], help="run the faults whose name contains this (repeatable)")
    p.add_argument("--keep", type=Path, help="build the faults here and keep them (default: a temporary folder)")
    p.add_argument("--verbose", action="store_true", help="print the output of faults not handled cleanly")
    p.add_argument(
        "--isolation",
        choices=["fork", "exec"],
        default="fork" if hasattr(os, "fork") else "exec",
        help="fork: children forked from this process, which has imported torch already (fast); "
        "exec: a fresh interpreter per fault",
    )
    args = p.parse_args(argv)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="qaclip-bad-inputs-"))
    try:
        base = Base(workdir / "_base")
        selected = [f for f in faults(base) if not args.only or any(o in f.name for o in args.only)]
        outcomes = run_all(selected, workdir, args.jobs, args.isolation)
    finally:
        for hub in SERVERS:
            hub.close()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(o.fault.name) for o in outcomes) + 2
    print(
        f"{'input':<{width}}{'via':<7}{'exit':>5}  {'traceback':<10}{'left behind':<14}{'named':<7}{'clean':<6}{'s':>6}"
    )
    for o in outcomes:
        left = ", ".join(o.leftovers) or "nothing"
        named = "yes" if not o.missing_needles else "no"
        print(
            f"{o.fault.name:<{width}}{o.fault.surface:<7}{o.code:>5}  {'YES' if o.traceback else 'no':<10}"
            f"{left[:13]:<14}{named:<7}{'yes' if o.clean else 'NO':<6}{o.seconds:>6.1f}"
        )
        if not o.clean and args.verbose:
            print(
                f"    expected exit {o.fault.codes}; missing in output: {o.missing_needles}; left: {o.leftovers}; "
                f"problems: {o.problems}"
            )
            print("    " + "\n    ".join(o.output.strip().splitlines()[-12:]))
    clean = sum(o.clean for o in outcomes)
    print(f"{len(outcomes)} bad inputs, {clean} handled cleanly")
    return 0 if clean == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
