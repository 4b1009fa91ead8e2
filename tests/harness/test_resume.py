"""Resume after a kill: a split's image features stored in chunks as they are computed, and a rerun that encodes
only the chunks it cannot reuse, under the feature cache's rules (record, digest, ids, this run's canary)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from qaclip_core.transforms import image_transform
from qaclip_harness.cache import Cache
from qaclip_harness.cache.space import CacheWarning
from qaclip_harness.data.retrieval import LmdbImages, TextRecord, write_retrieval_split
from qaclip_harness.eval.cached import CaseCache, image_features
from qaclip_harness.eval.resume import ChunkPlan
from qaclip_harness.eval.runner import EvalOptions
from qaclip_harness.probe.probe_set import IMAGES_DIR, read_manifest

BATCH, CHUNK = 4, 8  # the probe set's 30 images: 8 batches, chunks of 8, 8, 8 and 6 images
STOP_AT = 21  # reading this item interrupts the first run: chunks 0 and 1 are stored, chunk 2 is half encoded


def test_a_plan_cuts_whole_batches():
    plan = ChunkPlan.of(30, BATCH, CHUNK)
    assert plan is not None and (plan.batches, plan.per_chunk, plan.count) == (8, 2, 4)
    assert [plan.item_range(c) for c in range(plan.count)] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert [plan.chunk_of(b) for b in range(plan.batches)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ChunkPlan.of(30, BATCH, 10).per_chunk == 2  # rounded down to whole batches
    assert ChunkPlan.of(30, 16, 5).per_chunk == 1  # at least one batch
    assert ChunkPlan.of(30, BATCH, 0) is None  # --resume-chunk 0: no chunks
    assert ChunkPlan.of(30, BATCH, 64) is None  # one chunk would be the split's own entry


class Tiny:
    """Features: each channel's mean and spread plus ``offset`` (enough to tell images apart, no model needed)."""

    name, device, dtype = "tiny", torch.device("cpu"), torch.float32

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) + 1.0 + self.offset


class Counted(LmdbImages):
    """The probe LMDB, counting which items are read, and interrupted (as a kill would) when ``stop_at`` is read."""

    def __init__(self, *args, stop_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: list[int] = []
        self.stop_at = stop_at

    def load_image(self, i: int):
        if i == self.stop_at:
            raise KeyboardInterrupt(f"interrupted at item {i}")
        self.read.append(i)
        return super().load_image(i)


@pytest.fixture(scope="module")
def lmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe-lmdb")
    images = read_manifest()["images"]
    data = {i: (IMAGES_DIR / name).read_bytes() for i, name in enumerate(images, start=1)}
    texts = [TextRecord(text_id=i, text="图片", image_ids=[i]) for i in data]
    return write_retrieval_split(root, "Probe-CN", "test", data, texts) / "lmdb" / "test" / "imgs"


def _run(lmdb: Path, cache: Path, build: str | None, stop_at=None, encoder=None, mode="use", chunk=CHUNK):
    """image_features on the probe LMDB as the runner calls it; the dataset (what was read) and the result."""
    images = Counted(lmdb, image_transform(32), stop_at=stop_at)
    cc = CaseCache(Cache.at(cache, mode), {"model": "tiny"})
    opts = EvalOptions(progress=False, batch_size=BATCH, resume_chunk=chunk)
    data = {"images": "d" * 64, "split": "test", "build": build}
    return images, image_features(cc, encoder or Tiny(), images, opts, "probe", data)


def _chunks(cache: Path) -> dict[str, list[int]]:
    """The chunk entries in the cache: record file -> its item range."""
    out = {}
    for record in sorted((cache / "features").glob("*.json")):
        doc = json.loads(record.read_text(encoding="utf-8"))
        if doc["fields"]["what"] == "image feature chunk":
            out[record.name] = doc["fields"]["items"]
    return out


def _interrupt(lmdb: Path, cache: Path, build: str | None) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(lmdb, cache, build, stop_at=STOP_AT)
    assert sorted(_chunks(cache).values()) == [[0, 8], [8, 16]]


@pytest.mark.parametrize("build", ["b", None], ids=["pixel-path", "float-path"])
def test_an_interrupted_split_resumes_encoding_only_the_missing_chunks(tmp_path, lmdb, build):
    _, (cold_ids, cold, cold_prov) = _run(lmdb, tmp_path / "cold", build)
    assert cold_prov.resumed is None and _chunks(tmp_path / "cold") == {}  # the split's entry replaced its chunks

    _interrupt(lmdb, tmp_path / "cache", build)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # reusing sound chunks is silent
        images, (ids, feats, prov) = _run(lmdb, tmp_path / "cache", build)
    assert images.read == list(range(16, 30))  # chunks 0 and 1 were neither read nor encoded again
    assert ids == cold_ids and torch.equal(feats, cold) and prov.sha256 == cold_prov.sha256
    assert prov.status == "computed"
    assert prov.resumed is not None
    assert {k: prov.resumed[k] for k in ("chunks", "of_chunks", "images", "of_images", "encoded")} == {
        "chunks": 2,
        "of_chunks": 4,
        "images": 16,
        "of_images": 30,
        "encoded": 14,
    }
    assert "resumed 16 of 30 images (2 of 4 chunks) from an interrupted run" in prov.note
    if build:  # only part of the split was decoded: no pixel entry, and the same uint8 path as the first run
        assert "a resumed run does not write the pixel cache" in prov.note
    assert _chunks(tmp_path / "cache") == {}
    _, (_, again, again_prov) = _run(lmdb, tmp_path / "cache", build)  # and the next run reuses the whole entry
    assert again_prov.status == "reused" and torch.equal(again, cold)


def test_a_damaged_chunk_is_named_and_encoded_again(tmp_path, lmdb):
    _, (_, cold, _) = _run(lmdb, tmp_path / "cold", None)
    _interrupt(lmdb, tmp_path / "cache", None)
    record = next(name for name, items in _chunks(tmp_path / "cache").items() if items == [8, 16])
    payload = tmp_path / "cache" / "features" / record.replace(".json", ".npz")
    data = bytearray(payload.read_bytes())
    data[-9] ^= 1
    payload.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match=f"{payload.name} cannot be used .*sha256"):
        images, (_, feats, prov) = _run(lmdb, tmp_path / "cache", None)
    assert images.read == list(range(8, 30)) and torch.equal(feats, cold)
    assert prov.resumed["chunks"] == 1 and prov.resumed["images"] == 8


def test_chunks_this_run_does_not_reproduce_are_encoded_again(tmp_path, lmdb):
    """A change the key does not name (here the encoder's numbers, under the same fields) shows in the canary."""
    _interrupt(lmdb, tmp_path / "cache", None)
    changed = Tiny(offset=1e-3)
    _, (_, cold, _) = _run(lmdb, tmp_path / "cold", None, encoder=changed)
    with pytest.warns(CacheWarning, match="matches its key but not this run's canary"):
        images, (_, feats, prov) = _run(lmdb, tmp_path / "cache", None, encoder=changed)
    assert images.read == list(range(30)) and torch.equal(feats, cold) and prov.resumed is None


def test_a_read_only_cache_resumes_but_stores_nothing_and_refresh_ignores_chunks(tmp_path, lmdb):
    _interrupt(lmdb, tmp_path / "cache", None)
    stored = _chunks(tmp_path / "cache")
    images, (_, _, prov) = _run(lmdb, tmp_path / "cache", None, mode="read-only")
    assert images.read == list(range(16, 30)) and prov.resumed["images"] == 16
    assert _chunks(tmp_path / "cache") == stored  # a pull request's job leaves the cache as it found it
    images, (_, _, prov) = _run(lmdb, tmp_path / "cache", None, mode="refresh")
    assert images.read == list(range(30)) and prov.resumed is None and _chunks(tmp_path / "cache") == {}


def test_another_chunk_size_or_batch_size_starts_again(tmp_path, lmdb):
    """A chunk is keyed by its item range and the batch size: chunks of another plan are never mixed in."""
    _interrupt(lmdb, tmp_path / "cache", None)
    images, (_, _, prov) = _run(lmdb, tmp_path / "cache", None, chunk=12)  # chunks of 3 batches: [0, 12), ...
    assert images.read == list(range(30)) and prov.resumed is None


def test_chunks_left_beside_a_stored_split_are_dropped_by_the_next_hit(tmp_path, lmdb):
    """A run killed after storing the split's entry but before dropping its chunks: the next run reuses the entry and drops them."""
    import shutil

    _interrupt(lmdb, tmp_path / "cache", None)
    _run(lmdb, tmp_path / "cold", None)
    for entry in (tmp_path / "cold" / "features").iterdir():
        shutil.copy2(entry, tmp_path / "cache" / "features" / entry.name)
    images, (_, _, prov) = _run(lmdb, tmp_path / "cache", None)
    assert prov.status == "reused" and images.read == [] and _chunks(tmp_path / "cache") == {}


def test_no_chunks_are_written_when_chunks_are_off(tmp_path, lmdb):
    with pytest.raises(KeyboardInterrupt):
        _run(lmdb, tmp_path / "cache", None, stop_at=STOP_AT, chunk=0)
    assert _chunks(tmp_path / "cache") == {}
    assert not np.any([p.suffix == ".npz" for p in (tmp_path / "cache").rglob("*")])


# ---- the suite killed in the middle of a case (SIGKILL: nothing of the process cleans up), then run again

REPO = Path(__file__).resolve().parents[2]
SUITE = (
    "-m",
    "not throughput",
    "--select-models",
    "fixture-tiny",
    "--select-datasets",
    "fixture-shapes",
    "--batch-size",
    "16",
    "--resume-chunk",
    "32",  # the fixture's 180 test images: 12 batches, chunks of 32 images
    "-p",
    "resume_pause_plugin",
)
# loaded by every run here (the cache key counts every module from outside the packages): once asked to, it holds
# the process still after two chunks are stored and one batch of the third is encoded, so the test can kill it there
PAUSE_PLUGIN = """
import os, time
from pathlib import Path


def pytest_configure(config):
    marker = os.environ.get("RESUME_TEST_PAUSED")
    if not marker:
        return
    from qaclip_harness.eval import resume

    store_chunk = resume.ChunkWriter.__call__

    def call(self, batch, ids, feats):
        store_chunk(self, batch, ids, feats)
        if self.stored >= 2 and self.pending:
            Path(marker).write_text(str(os.getpid()), encoding="utf-8")
            while True:
                time.sleep(60)

    resume.ChunkWriter.__call__ = call
"""


def _suite_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *SUITE, *args]


def _suite_env(tmp_path: Path, cache: Path, **extra: str) -> dict[str, str]:
    # the run is named by host and process (GitHub Actions' run id would name both runs alike)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QACLIP_", "GITHUB_RUN_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "QACLIP_CACHE": str(cache), "PYTHONPATH": str(tmp_path / "plugin"), **extra}


def _image_step(report: Path) -> tuple[dict, dict]:
    (case,) = json.loads((report / "report.json").read_text(encoding="utf-8"))["results"]
    return case, case["features"]["steps"]["images"]


def test_a_suite_run_killed_in_the_middle_of_a_case_resumes_where_it_stopped(tmp_path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "resume_pause_plugin.py").write_text(PAUSE_PLUGIN, encoding="utf-8")
    cache, paused = tmp_path / "cache", tmp_path / "paused"

    def run(report: str, cache: Path) -> subprocess.CompletedProcess:
        out = subprocess.run(
            _suite_command("--report", str(tmp_path / report)),
            cwd=REPO,
            env=_suite_env(tmp_path, cache),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        return out

    run("cold", tmp_path / "cold-cache")  # the same run, never interrupted

    proc = subprocess.Popen(
        _suite_command("--report", str(tmp_path / "killed")),
        cwd=REPO,
        env=_suite_env(tmp_path, cache, RESUME_TEST_PAUSED=str(paused)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused.exists(), f"the run ended (exit {proc.poll()}) before it stored two chunks"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(_chunks(cache).values()) == [[0, 32], [32, 64]]
    assert not (tmp_path / "killed" / "report.json").exists()

    resumed = run("resumed", cache)
    assert "encode fixture-shapes images: 116 images" in resumed.stdout  # 180 less the two chunks' 64
    cold_case, cold_images = _image_step(tmp_path / "cold")
    case, images = _image_step(tmp_path / "resumed")
    assert images["sha256"] == cold_images["sha256"]  # the image features bit for bit
    same = ("status", "measured", "checks", "decisions", "counts")
    assert {k: case[k] for k in same} == {k: cold_case[k] for k in same}
    assert {k: images["resumed"][k] for k in ("chunks", "of_chunks", "images", "of_images", "encoded")} == {
        "chunks": 2,
        "of_chunks": 6,
        "images": 64,
        "of_images": 180,
        "encoded": 116,
    }
    assert case["features"]["status"] == "partly reused"
    (line,) = [
        line
        for line in (tmp_path / "resumed" / "report.md").read_text(encoding="utf-8").splitlines()
        if "resumed from an interrupted run" in line
    ]
    assert "images: 64 of 180 resumed from an interrupted run (2 of 6 chunks" in line
    assert _masked(line) in (REPO / "docs" / "caching.md").read_text(encoding="utf-8").splitlines()  # its sample
    assert _chunks(cache) == {}


def _masked(line: str) -> str:
    """A report line with what differs from run to run (host, process, date, keys) as the docs write it."""
    line = re.sub(r"[\w.-]+ pid \d+", "<host> pid <pid>", line)
    line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<date>", line)
    return re.sub(r"\b[0-9a-f]{12}\b", "<key>", line)
