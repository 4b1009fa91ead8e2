"""ONNX export of the fixture: the export-onnx command, the manifest, dynamic axes, ORT parity, bad input and the cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'qaclip-core[onnx]'")

import onnx

from qaclip_core.checkpoint import load_checkpoint
from qaclip_core.registry import get_card
from qaclip_core.tokenizer import tokenize
from qaclip_core.transforms import MEAN, STD
from qaclip_harness.backends.native import NativeEncoder
from qaclip_harness.backends.onnx import OnnxEncoder, verify_export
from qaclip_harness.cli import commands as cli
from qaclip_harness.errors import ExportError, UnsupportedError
from qaclip_harness.export import cache as export_cache
from qaclip_harness.export.manifest import MANIFEST_NAME, read_manifest
from qaclip_harness.export.onnx import DEFAULT_OPSET, MIN_OPSET, export_model
from qaclip_harness.export.parity import compare, rank_check
from qaclip_harness.export.runtime import runtime_max_opset
from qaclip_harness.fixture import CHECKPOINT

ARCH = "ViT-fixture@BERT-fixture"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The fixture checkpoint exported once, through the command line."""
    out = tmp_path_factory.mktemp("onnx") / "fixture"
    assert cli.main(["export-onnx", "--checkpoint", str(CHECKPOINT), "--arch", ARCH, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    """A private copy of the export, to damage."""
    return Path(shutil.copytree(exported, tmp_path / "export"))


@pytest.fixture(scope="module")
def eager():
    return NativeEncoder(load_checkpoint(CHECKPOINT, ARCH), name="fixture-tiny")


def test_manifest_records_what_a_deployer_needs(exported):
    m = read_manifest(exported)
    assert m.checkpoint_sha256 == get_card("fixture-tiny").sha256 and m.checkpoint_file == CHECKPOINT.name
    assert (m.opset, m.precision, m.arch, m.resolution, m.context_length) == (DEFAULT_OPSET, "fp32", ARCH, 64, 52)
    assert m.normalisation["mean"] == list(MEAN) and m.normalisation["std"] == list(STD)
    assert (
        m.versions["qaclip_core"] and m.versions["torch"] == torch.__version__ and m.exporter.startswith("torch.onnx")
    )
    assert m.towers["image"]["input"] == {"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}
    assert m.towers["text"]["input"]["shape"] == ["batch", "sequence"] and m.towers["text"]["input"]["dtype"] == "int64"
    assert m.logit_scale == pytest.approx(float(load_checkpoint(CHECKPOINT, ARCH).logit_scale.detach().exp()))
    # the ONNX files themselves: declared opset, dynamic batch (and sequence) axes, as the manifest says
    for tower, axes in (("image", ["batch", 3, 64, 64]), ("text", ["batch", "sequence"])):
        proto = onnx.load(str(exported / m.towers[tower]["file"]), load_external_data=False)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == axes
    assert m.verification["image_max_abs_diff"] <= 1e-5 and m.verification["text_max_abs_diff"] <= 1e-5
    assert sorted(p.name for p in exported.iterdir()) == sorted([MANIFEST_NAME, *m.files])


def test_onnx_parity_batches_1_7_64(exported, eager):
    report = compare(OnnxEncoder(exported, device="cpu"), eager, "fp32", model="fixture-tiny")
    assert report.ok, report.table()
    assert sorted({t.batch for t in report.towers}) == [1, 7, 64]
    assert all(t.max_abs_diff <= 1e-5 for t in report.towers)


def test_padded_export_equals_packed_eager_path_at_every_length(exported, eager):
    """The exported text model (plain padded path) against the eager packed fast path, sequence lengths 2 to 52."""
    ours = OnnxEncoder(exported, device="cpu")
    full = tokenize(
        ["一群人在公园里打太极拳，背景是高楼大厦，天空中飘着几朵白云，远处还有一座古老的宝塔和一条蜿蜒的小河" * 2]
    )[0]
    assert int((full != 0).sum()) == 52
    rows = torch.zeros(51, 52, dtype=torch.long)
    for i, length in enumerate(range(2, 53)):  # [CLS] + length - 2 tokens + [SEP]
        rows[i, : length - 1] = full[: length - 1]
        rows[i, length - 1] = full[51]
    assert eager.model.text_fast_path
    a, b = ours.encode_text(rows), eager.encode_text(rows)
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    assert (a - b).abs().max() <= 1e-5
    # and one row at a time: the sequence axis of each call is that row's own length
    for row in rows[[0, 10, 50]]:
        one = ours.encode_text(row[None])
        assert torch.allclose(one / one.norm(), b[rows.tolist().index(row.tolist())][None], atol=1e-5)


def test_export_of_a_model_in_fp16_is_close(tmp_path, eager):
    model = load_checkpoint(CHECKPOINT, ARCH, precision="fp16")
    manifest = export_model(
        model, tmp_path / "fp16", name="fixture-fp16", checkpoint_sha256="0" * 64, verify=verify_export
    )
    assert manifest.precision == "fp16" and manifest.towers["image"]["output"]["dtype"] == "float16"
    ours = OnnxEncoder(tmp_path / "fp16", device="cpu")
    assert ours.dtype == torch.float16
    report = compare(ours, NativeEncoder(model), "fp16", batches=(1, 7), model="fixture-fp16")
    assert report.ok, report.table()
    assert min(t.min_cosine for t in report.towers) >= 0.999


# --------------------------------------------------------------------------------------------
# ranking with near-ties


def test_rank_check_allows_swaps_only_at_near_ties():
    ref = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    near = ref.clone()
    near[0, 1], near[0, 2] = 0.7, 0.8  # a swap of two items 0.1 apart in the reference
    assert rank_check("t2i", near, ref, tie=0.2).ok
    bad = rank_check("t2i", near, ref, tie=0.05)
    # position 1 holds an item 0.1 worse than the reference's; position 2 a better one, which is no fault
    assert not bad.ok and (bad.differing, bad.violations) == (2, 1) and bad.worst_gap == pytest.approx(0.1)
    # an item from outside the reference's top 5 moving in is judged the same way
    outside = ref.clone()
    outside[0, 6] = 0.95
    moved = rank_check("t2i", outside, ref, tie=0.05)
    assert (moved.differing, moved.violations) == (5, 1) and moved.worst_gap == pytest.approx(0.6)
    assert rank_check("t2i", ref, ref, tie=0.0).differing == 0


# --------------------------------------------------------------------------------------------
# bad input


def test_missing_or_truncated_or_corrupt_files_are_named(copy):
    data = copy / "text.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ExportError, match=r"text\.onnx\.data: 1,000 bytes.*truncated"):
        OnnxEncoder(copy, device="cpu")
    (copy / "image.onnx").unlink()
    with pytest.raises(ExportError, match=r"image\.onnx: missing"):
        OnnxEncoder(copy, device="cpu")


def test_corrupt_file_of_the_right_size(copy):
    path = copy / "image.onnx.data"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"image\.onnx\.data: sha256 .*corrupt"):
        OnnxEncoder(copy, device="cpu")


def test_manifest_missing_or_malformed(copy):
    doc = json.loads((copy / MANIFEST_NAME).read_text())
    del doc["opset"]
    (copy / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=r"manifest\.json: missing key 'opset'"):
        OnnxEncoder(copy, device="cpu")
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ExportError, match="is not valid JSON at line 1"):
        read_manifest(copy)
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(ExportError, match=r"manifest.json: missing"):
        OnnxEncoder(copy, device="cpu")


def test_manifest_of_another_checkpoint_is_refused(exported):
    other = "ab" * 32
    with pytest.raises(
        ExportError, match=f"exported from the checkpoint with sha256 {get_card('fixture-tiny').sha256}.*{other}"
    ):
        OnnxEncoder(exported, device="cpu", checkpoint_sha256=other)


def test_opset_the_runtime_does_not_run(copy):
    top = runtime_max_opset()
    path = copy / "image.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = top + 1
    onnx.save(proto, str(path))
    doc = json.loads((copy / MANIFEST_NAME).read_text())
    from qaclip_core.pretrained import sha256_file

    doc["files"]["image.onnx"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (copy / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=rf"image\.onnx: uses ai\.onnx opset {top + 1}, .*runs opsets up to {top}"):
        OnnxEncoder(copy, device="cpu")


def test_export_refuses_opsets_outside_the_supported_range(tmp_path, capsys):
    code = cli.main(["export-onnx", "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "x"), "--opset", "13"])
    err = capsys.readouterr().err
    assert code == 2 and f"LayerNormalization needs opset {MIN_OPSET}" in err and err.count("\n") == 1
    code = cli.main(["export-onnx", "--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "x"), "--opset", "99"])
    assert code == 2 and "opset 99 is newer than" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_wrong_resolution_and_shapes(exported):
    ours = OnnxEncoder(exported, device="cpu")
    with pytest.raises(ValueError, match=r"takes \[N, 3, 64, 64\] \(resolution 64\), got \[2, 3, 224, 224\]"):
        ours.encode_image(torch.zeros(2, 3, 224, 224))
    with pytest.raises(ValueError, match=r"got \[3, 64, 64\]"):
        ours.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        ours.encode_text(torch.ones(1, 65, dtype=torch.long))
    assert ours.encode_image(torch.zeros(0, 3, 64, 64)).shape == (0, 64)


# --------------------------------------------------------------------------------------------
# the cache


@pytest.fixture
def cache(tmp_path, monkeypatch, exported):
    """An empty export cache whose exporter copies the module's export (the exporter itself is tested above)."""
    for name in ("QACLIP_NO_CACHE", "QACLIP_REFRESH_CACHE", "QACLIP_CACHE_READ_ONLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QACLIP_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_export(checkpoint, out_dir, **kw):
        calls.append(out_dir)
        shutil.copytree(exported, out_dir)
        return read_manifest(out_dir)

    monkeypatch.setattr("qaclip_harness.export.onnx.export_checkpoint", fake_export)
    return calls


def _cached(mode=None):
    return export_cache.cached_export(CHECKPOINT, arch=ARCH, mode=mode)


def test_cache_reuses_a_valid_export(cache):
    first = _cached()
    sha = first.sha256
    assert sha == get_card("fixture-tiny").sha256 and len(cache) == 1 and not first.reused
    assert first.directory.name == export_cache.cache_key(sha, DEFAULT_OPSET, "fp32")
    second = _cached()
    assert second.directory == first.directory and second.reused and len(cache) == 1
    # the digest of the checkpoint shipped in the package is not remembered beside it (no write into the package)
    assert not CHECKPOINT.with_name(CHECKPOINT.name + ".sha256").exists()


def test_the_key_holds_the_source_and_the_exporting_libraries(monkeypatch):
    sha = get_card("fixture-tiny").sha256
    fields = export_cache.export_fields(sha, DEFAULT_OPSET, "fp32")
    assert {"torch", "onnx", "onnxscript", "onnxruntime"} <= set(fields["versions"])
    before = export_cache.cache_key(sha, DEFAULT_OPSET, "fp32")
    monkeypatch.setattr(export_cache, "source_digest", lambda: {"packages": "edited", "outside": "", "modules": ""})
    assert export_cache.cache_key(sha, DEFAULT_OPSET, "fp32") != before  # an edit of the exporter or the model code


@pytest.mark.parametrize(
    "damage", ["other checkpoint", "truncated", "zeroed, size and time kept", "no manifest", "no record", "foreign"]
)
def test_cache_rebuilds_a_stale_export(cache, damage):
    import os

    entry = _cached()
    directory = entry.directory
    manifest = directory / MANIFEST_NAME
    doc = json.loads(manifest.read_text())
    record = directory.with_name(directory.name + ".json")
    if damage == "other checkpoint":
        doc["checkpoint_sha256"] = "cd" * 32
        manifest.write_text(json.dumps(doc))
    elif damage == "truncated":
        (directory / "text.onnx").write_bytes(b"\x08")
    elif damage == "zeroed, size and time kept":
        weights = next(p for p in directory.iterdir() if p.name.endswith(".data"))
        st = weights.stat()
        weights.write_bytes(bytes(st.st_size))
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "no manifest":
        manifest.unlink()
    elif damage == "no record":
        record.unlink()
    else:
        doc = json.loads(record.read_text())
        doc["fields"]["opset"] = 17  # a record of another export placed under this key
        record.write_text(json.dumps(doc))
    with pytest.warns(RuntimeWarning, match="stale ONNX export in the cache, rebuilt"):
        again = _cached()
    assert again.directory == directory and not again.reused and len(cache) == 2
    assert export_cache.stale_reason(directory, again.sha256, DEFAULT_OPSET, "fp32") is None


def test_cache_modes_off_refresh_and_read_only(cache, tmp_path):
    root = tmp_path / "cache" / "onnx"
    off = _cached("off")
    assert not off.reused and not off.directory.is_relative_to(root) and not root.exists()
    ro = _cached("read-only")  # nothing cached yet: exported into a temporary folder, the cache untouched
    assert not ro.reused and not ro.directory.is_relative_to(root) and not root.exists()
    first = _cached()
    (first.directory / "left by the first export").touch()  # an inode number may be reused: a marker is not
    ro = _cached("read-only")
    assert ro.reused and ro.directory == first.directory and not ro.writes
    refreshed = _cached("refresh")
    assert not refreshed.reused and refreshed.directory == first.directory
    assert not (first.directory / "left by the first export").exists() and len(cache) == 4
    (first.directory / "text.onnx").write_bytes(b"\x08")
    before = sorted(p.name for p in root.iterdir())
    with pytest.warns(RuntimeWarning, match="not used \\(read-only cache"):
        ro = _cached("read-only")
    assert not ro.directory.is_relative_to(root) and sorted(p.name for p in root.iterdir()) == before


def test_the_environment_variables_set_the_mode(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("QACLIP_CACHE_READ_ONLY", "1")
    assert not _cached().directory.is_relative_to(tmp_path / "cache")
    assert not (tmp_path / "cache" / "onnx").exists()  # not even a lock file
    monkeypatch.setenv("QACLIP_NO_CACHE", "1")
    with pytest.raises(ValueError, match="QACLIP_CACHE_READ_ONLY cannot be combined with QACLIP_NO_CACHE"):
        _cached()


def test_suite_option_loads_through_the_cache(cache):
    from qaclip_harness.backends import load_encoder

    encoder = load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu", backend_name="onnx")
    assert isinstance(encoder, OnnxEncoder) and encoder.providers == ["CPUExecutionProvider"] and len(cache) == 1
    with pytest.raises(UnsupportedError, match="exports fp32 and fp16, not bf16"):
        load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu", precision="bf16", backend_name="onnx")
    with pytest.raises(UnsupportedError, match="is a altclip model"):
        load_encoder(get_card("altclip-vit-l-14"), CHECKPOINT, device="cpu", backend_name="onnx")


def test_a_reused_export_must_reproduce_its_canary_through_onnx_runtime(cache):
    from qaclip_harness.backends import load_encoder

    load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu", backend_name="onnx", cache_mode="use")
    entry = _cached()
    record = entry.directory.with_name(entry.directory.name + ".json")
    doc = json.loads(record.read_text())
    assert list(doc["canaries"]) == ["cpu CPUExecutionProvider"] and len(cache) == 1
    load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu", backend_name="onnx", cache_mode="use")
    assert len(cache) == 1  # reproduced: reused
    doc["canaries"]["cpu CPUExecutionProvider"] = (
        "0" * 64
    )  # what this ONNX Runtime computed is not what it computes now
    record.write_text(json.dumps(doc))
    with pytest.warns(RuntimeWarning, match="ONNX Runtime does not reproduce its canary on cpu"):
        load_encoder(get_card("fixture-tiny"), CHECKPOINT, device="cpu", backend_name="onnx", cache_mode="use")
    assert len(cache) == 2 and json.loads(record.read_text())["canaries"]["cpu CPUExecutionProvider"] != "0" * 64


# --------------------------------------------------------------------------------------------
# optional dependencies


def test_missing_extra_is_one_line_naming_it():
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import qaclip_core, qaclip_harness.backends, qaclip_harness.cli.commands, qaclip_harness.export\n"
        "qaclip_harness.cli.commands._parser()\n"
        "from qaclip_harness.backends import load_encoder\n"
        "from qaclip_core.registry import get_card\n"
        "try:\n"
        "    load_encoder(get_card('fixture-tiny'), 'x.pt', backend_name='onnx')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        "the ONNX backend needs onnxruntime (not installed); install the 'onnx' extra: pip install 'qaclip-core[onnx]'"
    ]


def test_cli_eval_on_the_onnx_backend_reuses_the_cached_export(tmp_path, monkeypatch, exported, capsys):
    """`eval --backend onnx` on the fixture dataset: the export placed in the cache under its key is used as it is."""
    import yaml

    from qaclip_harness.fixture.shapes import write_shapes_dataset

    monkeypatch.setenv("QACLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        "qaclip_harness.export.onnx.export_checkpoint", lambda c, out, **k: shutil.copytree(exported, out)
    )
    from qaclip_harness.backends.onnx import load_checkpoint_encoder

    load_checkpoint_encoder(CHECKPOINT, ARCH, device="cpu")  # into the cache, with its record and canary
    monkeypatch.setattr("qaclip_harness.export.onnx.export_checkpoint", lambda *a, **k: pytest.fail("exported again"))
    write_shapes_dataset(tmp_path / "data")
    code = cli.main(
        [
            "eval",
            "--checkpoint",
            str(CHECKPOINT),
            "--dataset",
            "fixture-shapes",
            "--data-root",
            str(tmp_path / "data"),
            "--backend",
            "onnx",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    expected = yaml.safe_load((REPO / "expected" / "fixture-shapes.yaml").read_text(encoding="utf-8"))
    gate = expected["models"]["fixture-tiny"]["cn-clip-reference"]
    for metric, value in gate.items():  # one caption / one image of slack, the fixture's fp32 tolerance
        assert abs(out[metric] - value) <= expected["tolerance"]["fp32"][metric.split("_")[0]]["abs"] + 1e-9, metric


def test_execution_provider_follows_the_device():
    import onnxruntime as ort

    from qaclip_harness.export.runtime import resolve_providers

    assert resolve_providers("cpu") == (torch.device("cpu"), ["CPUExecutionProvider"])
    if "CUDAExecutionProvider" in ort.get_available_providers():
        dev, providers = resolve_providers("cuda:0")
        assert dev == torch.device("cuda", 0) and providers[0] == ("CUDAExecutionProvider", {"device_id": 0})
    else:
        with pytest.raises(ExportError, match=r"has no CUDAExecutionProvider.*onnxruntime-gpu"):
            resolve_providers("cuda:0")
    with pytest.raises(ExportError, match="runs on cpu or cuda"):
        resolve_providers("mps")
