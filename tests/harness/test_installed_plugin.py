"""The plugin as another project gets it: a wheel of this repository in a fresh environment, used by a downstream project.

Built once for the module:

- a wheel of this repository (``pip wheel --no-deps`` of a copy of its tracked files: the build writes
  nothing into the checkout);
- a fresh virtual environment without pip, which sees this test environment's packages *after* its own
  (one ``.pth`` line: torch is 5 GB and is reused, never reinstalled; the editable install of this
  checkout is not seen, its finder is never run), with the wheel installed into it;
- a downstream project outside the repository: its own package ``acme_clip`` whose encoder is an entry
  point of ``qaclip.backends``, model and dataset cards named by ``[tool.qaclip]``, an LMDB evaluation
  set, one ordinary test of its own, installed editable into that environment.

Then, with that environment's own ``qaclip`` and ``pytest``: the numbers are recorded once, ``pytest
--qaclip`` is green (the project's cases and a built-in fixture case, read from the wheel), a
deliberately regressed encoder (its image tower fed BGR) turns the same run red naming the metric,
with the feature cache of the green run still there, and without ``--qaclip`` no qaclip case is
collected. The first test records what each step costs (CI's time is bounded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TIMES: dict[str, float] = {}

ENCODER = '''
"""Acme's port of its fine-tuned Chinese CLIP, behind qaclip's Encoder interface."""

from __future__ import annotations

import torch

import qaclip_core
from qaclip_core.tokenizer import preprocess_text


class AcmeEncoder:
    def __init__(self, checkpoint, arch, device="cpu", precision="fp32"):
        self.model = qaclip_core.load_checkpoint(checkpoint, arch, device=device, precision=precision)
        self.name, self.dtype = "acme", self.model.dtype
        self.device = self.model.visual.conv1.weight.device
        self.preprocess = qaclip_core.image_transform(self.model.image_size)

    def tokenize(self, texts):
        return qaclip_core.tokenize([preprocess_text(t) for t in texts])

    @torch.inference_mode()
    def encode_image(self, images):
        images = images.to(self.device, self.dtype)
        return self.model.encode_image(images)

    @torch.inference_mode()
    def encode_text(self, tokens):
        return self.model.encode_text(tokens.to(self.device))


def load(card, checkpoint, device="cpu", precision="fp32", compile=False):
    return AcmeEncoder(checkpoint, card.arch, device=device, precision=precision)
'''
GOOD_LINE = "        images = images.to(self.device, self.dtype)\n"
BGR_LINE = "        images = images.to(self.device, self.dtype)[:, [2, 1, 0]]  # regressed: the port feeds BGR\n"

PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-clip"
version = "1.0"
dependencies = ["qaclip-core"]

[project.entry-points."qaclip.backends"]
acme = "acme_clip.encoder:load"

[tool.setuptools]
packages = ["acme_clip"]

[tool.qaclip]
cards = "qaclip/cards.yaml"
datasets = "qaclip/datasets.yaml"
expected = "qaclip/expected"
"""
CARDS = """
models:
  - name: acme-tiny
    backend: acme
    arch: ViT-fixture@BERT-fixture
    checkpoint: ../checkpoints/epoch_latest.pt
"""
DATASETS = """
datasets:
  - name: acme-valid
    kind: retrieval
    path: ../data/datasets/MyShop
    split: valid
    split_size: {images: 120, texts: 387}
"""
UNIT_TEST = """
def test_acme_has_a_test_of_its_own():
    assert 1 + 1 == 2
"""


def _timed(name: str, fn):
    start = time.perf_counter()
    try:
        return fn()
    finally:
        TIMES[name] = round(time.perf_counter() - start, 1)


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _pytest(bin_dir: Path) -> list[str]:
    """The environment's pytest (the test environment's package, run by the fresh environment's interpreter)."""
    return [str(bin_dir / "python"), "-m", "pytest"]


def _copy_tree(dest: Path) -> None:
    """The files git tracks plus untracked ones it does not ignore (links kept as links)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for rel in filter(None, out.stdout.decode().split("\0")):
        src, target = REPO / rel, dest / rel
        if not (src.is_symlink() or src.is_file()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def _isolation() -> list[str]:
    # the test environment's setuptools builds both wheels offline; without it pip fetches one (a registry)
    return ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(environment's bin folder, downstream project, environment variables), built as the module docstring says."""
    root = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("QACLIP_", "PYTHON", "VIRTUAL_ENV"))}
    base_env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def build():
        _copy_tree(root / "src")
        out = _run(
            [*pip, "wheel", "--no-deps", *_isolation(), "-w", str(root / "dist"), str(root / "src")], root, base_env
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return next((root / "dist").glob("qaclip_core-*.whl"))

    wheel = _timed("build the wheel", build)

    def environment():
        env_dir = root / "env"
        out = _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], root, base_env)
        assert out.returncode == 0, out.stderr[-3000:]
        python = env_dir / "bin" / "python"
        purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, base_env)
        site = Path(purelib.stdout.strip())
        # after the environment's own packages: the heavy dependencies of this test environment, as they are
        (site / "zz_reuse_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
        # --ignore-installed: the reused test environment holds an editable qaclip-core of the same version, which pip
        # would otherwise take as already installed (and install nothing into the fresh environment)
        out = _run(
            [*pip, "--python", str(python), "install", "--no-deps", "--ignore-installed", str(wheel)], root, base_env
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return env_dir / "bin"

    bin_dir = _timed("make the environment and install the wheel", environment)

    project = root / "downstream" / "acme"  # outside the repository
    files = {
        "pyproject.toml": PYPROJECT,
        "acme_clip/__init__.py": '"""Acme\'s Chinese CLIP."""\n',
        "acme_clip/encoder.py": ENCODER,
        "qaclip/cards.yaml": CARDS,
        "qaclip/datasets.yaml": DATASETS,
        "tests/test_unit.py": UNIT_TEST,
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    env = dict(base_env, PATH=os.pathsep.join([str(bin_dir), base_env.get("PATH", "")]))
    env["QACLIP_CACHE"] = str(root / "cache")  # one cache for every run: the regressed run finds the green run's

    def downstream():
        out = _run([str(bin_dir / "python"), "-m", "qaclip_harness.fixture.demo", str(project)], project, env)
        assert out.returncode == 0, out.stderr[-3000:]
        out = _run(
            [*pip, "--python", str(bin_dir / "python"), "install", "--no-deps", *_isolation(), "-e", str(project)],
            project,
            env,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    _timed("install the downstream project", downstream)
    return bin_dir, project, env


def test_the_environment_runs_the_wheel_not_the_checkout(world):
    bin_dir, project, env = world
    code = (
        "import qaclip_harness, qaclip_harness.pytest_plugin as p, importlib.metadata as m; "
        "print(qaclip_harness.__file__); print(p.__file__); "
        "print(sorted(e.name for e in m.entry_points(group='qaclip.backends')))"
    )
    out = _run([str(bin_dir / "python"), "-c", code], project, env)
    assert out.returncode == 0, out.stderr[-2000:]
    harness, plugin, backends = out.stdout.splitlines()
    env_dir = bin_dir.parent
    assert Path(harness).is_relative_to(env_dir) and Path(plugin).is_relative_to(env_dir), out.stdout
    assert not Path(harness).is_relative_to(REPO)
    assert backends == str(["acme", "altclip", "chineseclip", "native", "onnx", "zhclip"])
    print(f"costs so far (s): {TIMES}")


def test_record_gate_green_then_red_naming_the_metric(world):
    bin_dir, project, env = world
    record = _timed(
        "qaclip record",
        lambda: _run(
            [
                str(bin_dir / "qaclip"),
                "record",
                "--model",
                "acme-tiny",
                "--dataset",
                "acme-valid",
                "--out",
                "qaclip/expected",
                "--device",
                "cpu",
                "--runs",
                "fp32,fp32-batch",
                "--num-workers",
                "0",
            ],
            project,
            env,
        ),
    )
    assert record.returncode == 0, record.stdout[-3000:] + record.stderr[-3000:]
    recorded = yaml.safe_load(
        (project / "qaclip" / "expected" / "acme-valid-acme-tiny.yaml").read_text(encoding="utf-8")
    )
    assert recorded["models"]["acme-tiny"]["recorded"]["t2i_r1"] > 20

    gate = [
        *_pytest(bin_dir),
        "--qaclip",
        "-k",
        "acme or fixture-shapes-fixture-tiny",
        "-m",
        "not throughput",
        "-p",
        "no:cacheprovider",
        "--device",
        "cpu",
        "--num-workers",
        "0",
    ]
    green = _timed("pytest --qaclip (green)", lambda: _run([*gate, "--report", "green"], project, env))
    assert green.returncode == 0, green.stdout[-5000:] + green.stderr[-3000:]
    results = {
        f"{r['dataset']}-{r['model']}": r
        for r in json.loads((project / "green" / "report.json").read_text())["results"]
    }
    assert results["acme-valid-acme-tiny"]["status"] == "passed"
    assert results["fixture-shapes-fixture-tiny"]["status"] == "passed"  # a built-in case, from the wheel's files
    assert "qaclip/test_retrieval.py::test_retrieval[acme-valid-acme-tiny]" in _collected(bin_dir, project, env, "acme")

    encoder = project / "acme_clip" / "encoder.py"
    encoder.write_text(encoder.read_text(encoding="utf-8").replace(GOOD_LINE, BGR_LINE), encoding="utf-8")
    try:
        red = _timed("pytest --qaclip (regressed encoder)", lambda: _run([*gate, "-k", "acme"], project, env))
    finally:
        encoder.write_text(encoder.read_text(encoding="utf-8").replace(BGR_LINE, GOOD_LINE), encoding="utf-8")
    assert red.returncode == 1, red.stdout[-5000:] + red.stderr[-3000:]
    assert "FAILED qaclip/test_retrieval.py::test_retrieval[acme-valid-acme-tiny]" in red.stdout
    assert "acme-valid-acme-tiny (fp32) is outside tolerance" in red.stdout
    failure = red.stdout[red.stdout.index("acme-valid-acme-tiny (fp32) is outside tolerance") :]
    assert "t2i_r1" in failure and "i2t_r1" in failure  # the table names each metric that moved
    print(f"costs (s): {TIMES}")


def _collected(bin_dir: Path, project: Path, env: dict, *args: str) -> str:
    out = _run(
        [*_pytest(bin_dir), "--qaclip", "--collect-only", "-q", "-p", "no:cacheprovider", "-k", *args],
        project,
        env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out.stdout


def test_without_qaclip_no_case_is_collected(world, tmp_path):
    bin_dir, project, env = world
    plain = _run([*_pytest(bin_dir), "--collect-only", "-q", "-p", "no:cacheprovider"], project, env)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-2000:]
    ids = [line for line in plain.stdout.splitlines() if "::" in line]
    assert ids == ["tests/test_unit.py::test_acme_has_a_test_of_its_own"]
    # a project with no tests at all: pytest's "no tests ran", and not a qaclip case (nor an option of it) anywhere
    empty = tmp_path / "empty-project"
    empty.mkdir()
    (empty / "pyproject.toml").write_text("[project]\nname = 'empty'\nversion = '0'\n", encoding="utf-8")
    out = _run([*_pytest(bin_dir), "-p", "no:cacheprovider"], empty, env)
    assert out.returncode == 5 and "no tests ran" in out.stdout, out.stdout[-2000:]
    assert "plugins: qaclip-core-" in out.stdout  # installed and loaded, yet it added nothing
    assert "qaclip/" not in out.stdout and "reproduction report" not in out.stdout
    helped = _run([*_pytest(bin_dir), "--help"], empty, env)
    assert "--qaclip " in helped.stdout and "--data-root" not in helped.stdout  # one option until enabled


def test_the_zh_clip_cases_are_listed_and_skip_saying_how_to_get_the_weights(world, tmp_path):
    bin_dir, project, env = world
    listed = _collected(bin_dir, project, env, "zh-clip")
    assert "qaclip/test_retrieval.py::test_retrieval[flickr30k-cn-zh-clip-vit-l-14]" in listed
    assert "qaclip/test_zeroshot.py::test_zeroshot[imagenet-zh-clip-vit-l-14]" in listed
    # with the data there but not the weights, the case skips naming the repo and the folder to fill by hand
    data = tmp_path / "data" / "datasets" / "Flickr30k-CN"
    shutil.copytree(project / "data" / "datasets" / "MyShop", data)
    (data / "lmdb" / "valid").rename(data / "lmdb" / "test")
    (data / "valid_texts.jsonl").rename(data / "test_texts.jsonl")
    out = _run(
        [
            *_pytest(bin_dir),
            "--qaclip",
            "-k",
            "flickr30k-cn-zh-clip",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--data-root",
            str(tmp_path / "data"),
            "--checkpoint-dir",
            str(tmp_path / "checkpoints"),
        ],
        project,
        env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 skipped" in out.stdout and "thu-ml/zh-clip-vit-roberta-large-patch14" in out.stdout
    assert f"into {tmp_path / 'checkpoints' / 'zh-clip-vit-roberta-large-patch14'}" in out.stdout
