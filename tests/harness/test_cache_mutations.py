"""Cached features never hide a regression: a mutation on the feature path turns the same cases red with a warm
cache as with a cold one.

Each mutation is a one-line edit of the source, in a copy of the tree (the repository is never
touched), run by the suite there (``python -m pytest`` from the copy imports the copy): once with
the cache a run of the unmutated tree filled, once with an empty cache. Minutes of CPU (seven
suite runs), so ``tox -e large``; ``tests/harness/test_feature_cache.py`` checks cheaply, in the
default tests, that editing these files moves the key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.large
REPO = Path(__file__).resolve().parents[2]
TREE = ("qaclip_core", "qaclip_harness", "benchmarks", "expected", "pyproject.toml")
SELECTION = "fixture-shapes and not hf"  # the native fixture model's retrieval and zero-shot cases
MUTATIONS = {
    # the channels' means in BGR order, as a port from an OpenCV pipeline would have them
    "preprocessing": (
        "qaclip_core/transforms.py",
        "MEAN = (0.48145466, 0.4578275, 0.40821073)",
        "MEAN = (0.40821073, 0.4578275, 0.48145466)",
    ),
    # every caption loses its last character before tokenising
    "tokenizer": (
        "qaclip_core/tokenizer.py",
        'return text.lower().replace("\\u201c", \'"\')',
        'return text.lower()[:-1].replace("\\u201c", \'"\')',
    ),
    # the ViT blocks' feed-forward without its pre-norm (ln_2 forgotten)
    "model layer": ("qaclip_core/model/vision.py", "return x + self.mlp(self.ln_2(x))", "return x + self.mlp(x)"),
}


def _suite(tree: Path, cache: Path, report: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    env["QACLIP_CACHE"] = str(cache)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-k",
            SELECTION,
            "-m",
            "not throughput",
            "-q",
            "-p",
            "no:cacheprovider",
            "--report",
            str(report),
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-2000:]
    results = json.loads((report / "report.json").read_text(encoding="utf-8"))["results"]
    return {f"{r['dataset']}-{r['model']}": (r["status"], r["features"].get("status")) for r in results}


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A copy of the tree and a cache that its unmutated suite run filled (every case green)."""
    root = tmp_path_factory.mktemp("mutations")
    tree = root / "tree"
    for name in TREE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, tree / name)
    statuses = _suite(tree, root / "warm-cache", root / "clean")
    assert statuses and all(s == ("passed", "computed") for s in statuses.values()), statuses
    assert all(s == ("passed", "reused") for s in _suite(tree, root / "warm-cache", root / "again").values())
    return root, tree


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_mutation_turns_the_same_cases_red_warm_and_cold(warm, mutation):
    root, tree = warm
    path, old, new = MUTATIONS[mutation]
    source = tree / path
    original = source.read_text(encoding="utf-8")
    assert original.count(old) == 1, f"{path} no longer holds the line this mutation edits: {old}"
    source.write_text(original.replace(old, new), encoding="utf-8")
    try:
        with_warm = _suite(tree, root / "warm-cache", root / f"{mutation}-warm")
        cold = _suite(tree, root / f"{mutation}-cold-cache", root / f"{mutation}-cold")
    finally:
        source.write_text(original, encoding="utf-8")
    red = {case for case, (status, _) in cold.items() if status in ("failed", "error")}
    assert red, f"the {mutation} mutation turned no case red even without a cache: {cold}"
    assert {case for case, (status, _) in with_warm.items() if status in ("failed", "error")} == red
    assert all(features == "computed" for _, features in with_warm.values())  # nothing reused past the edit
