"""The checkpoint-only gates through the suite, as a runner calls them: ``pytest benchmarks -k <gate>-<model>``.

Every checkpoint here is random in every float tensor (tests/reference_models.py) and saved
the way its reference saves it, under the registry's published file name in a temporary
``--checkpoint-dir``; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qaclip_core import infer_arch, read_state_dict
from qaclip_core.registry import all_cards, get_card
from qaclip_harness.gates.example import check_example, load_example_specs
from qaclip_harness.probe import load_probe_set
from tests.conftest import REPO
from tests.reference_models import reference_model, save_reference_checkpoint, write_tiny_altclip

# One registry card per architecture up to ViT-L/14 (the QA-CLIP and CN-CLIP cards of an architecture
# share its code); both models in fp32 on the probe set's 30 images. The cases of ViT-L/14@336px and
# ViT-H/14 were deleted to keep CI within its time (they took most of the quarter hour these cases cost
# on CI's two cores): they ran the same suite case, loader and gate code as ViT-L/14 on those towers,
# which tests/core/test_parity_model.py still holds to cn_clip on a few inputs (PARITY_ELSEWHERE).
# The CN-CLIP cards: the QA-CLIP cards pin their files' sha256 and size, which a random
# checkpoint put in their place cannot match (and must not).
LARGE = [pytest.mark.slow]
ARCH_CARDS = [
    "cn-clip-rn50",
    pytest.param("cn-clip-vit-b-16", marks=LARGE),  # 40 s; ViT-B/16 parity on every input: test_parity_model
    pytest.param("cn-clip-vit-l-14", marks=LARGE),
]
PARITY_ELSEWHERE = {"cn-clip-vit-l-14-336", "cn-clip-vit-h-14"}  # architectures parity-tested by test_parity_model


def _suite(*args: str, timeout: int = 1500, pythonpath: str = "", offline: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, QACLIP_DEVICE="cpu")
    if offline:  # the fixture travels through a local hub on 127.0.0.1, which offline mode would refuse
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _random_checkpoint(name: str, folder: Path, seed: int = 0) -> Path:
    card = get_card(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_reference_checkpoint(reference_model(card.arch, seed), folder / card.filename)
    gc.collect()
    return path


def test_every_architecture_has_a_parity_case():
    from tests.core.test_parity_model import ARCHS

    covered = {get_card(c if isinstance(c, str) else c.values[0]).arch for c in ARCH_CARDS}
    covered |= {get_card(name).arch for name in PARITY_ELSEWHERE}
    assert {c.arch for c in all_cards() if c.adapter == "native" and not c.test_only} == covered
    model_parity = {a.values[0] if hasattr(a, "values") else a[0] for a in ARCHS}
    assert {get_card(name).arch for name in PARITY_ELSEWHERE} <= model_parity


@pytest.mark.parity
@pytest.mark.parametrize("name", ARCH_CARDS)
def test_parity_case_passes_on_a_random_checkpoint(name, tmp_path):
    ckpt = _random_checkpoint(name, tmp_path)
    assert infer_arch(read_state_dict(ckpt)) == get_card(name).arch  # the shapes say which architecture it is
    # --select-models, not -k: -k cn-clip-vit-l-14 also selects cn-clip-vit-l-14-336, whose checkpoint is not there
    out = _suite(
        "--select-models",
        name,
        "-k",
        "parity- and not onnx and not parity-hf",
        "--checkpoint-dir",
        str(tmp_path),
        "--report",
        str(tmp_path / "report"),
    )
    assert out.returncode == 0 and "1 passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-3000:]
    (result,) = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["results"]
    assert result["status"] == "passed" and result["measured"]["image_max_abs"] <= 1e-5
    assert result["measured"]["text_max_abs"] <= 1e-5 and result["measured"]["topk_mismatches"] == 0


@pytest.mark.parity
def test_parity_case_passes_on_a_tiny_random_altclip(tmp_path):
    pytest.importorskip("transformers")
    write_tiny_altclip(tmp_path / "AltCLIP", load_probe_set().captions)
    out = _suite("-k", "parity-altclip and not onnx", "--checkpoint-dir", str(tmp_path))
    assert out.returncode == 0 and "1 passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-3000:]


MUTATION_PLUGIN = '''
"""Test plugin: the BERT feed-forward forgets its bias (a fault parity must catch)."""
import torch.nn.functional as F
from qaclip_core.model import text

text.BertIntermediate.forward = lambda self, x: F.gelu(F.linear(x, self.dense.weight))
'''


@pytest.mark.parity
def test_parity_case_fails_with_a_table_when_our_model_is_wrong(tmp_path):
    (tmp_path / "forgot_bias.py").write_text(MUTATION_PLUGIN, encoding="utf-8")
    out = _suite("-k", "parity-fixture-tiny and not onnx", "-p", "forgot_bias", pythonpath=str(tmp_path), offline=False)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "parity-fixture-tiny (fp32) fails its gate" in out.stdout
    assert "tower" in out.stdout and "max |Δ|" in out.stdout and "worst item" in out.stdout
    text_row = next(line for line in out.stdout.splitlines() if line.startswith("text "))
    image_row = next(line for line in out.stdout.splitlines() if line.startswith("image "))
    assert "FAIL" in text_row and "FAIL" not in image_row


@pytest.mark.slow
def test_golden_save_then_compare_then_a_changed_checkpoint_fails(tmp_path):
    ckpt = _random_checkpoint("cn-clip-rn50", tmp_path / "ckpt")
    golden = tmp_path / "golden"
    common = ("-k", "golden-cn-clip-rn50", "--checkpoint-dir", str(ckpt.parent), "--golden-dir", str(golden))
    saved = _suite(*common, "--golden-save")
    assert saved.returncode == 0 and "1 passed" in saved.stdout, saved.stdout[-3000:]
    manifest = json.loads((golden / "manifest.json").read_text(encoding="utf-8"))["goldens"]["cn-clip-rn50-fp32-cpu.pt"]
    assert manifest["torch"] == torch.__version__ and len(manifest["checkpoint_sha256"]) == 64
    assert {"qaclip_core", "git_commit", "cuda", "device_name", "date", "probe_digest"} <= set(manifest)

    same = _suite(*common)
    assert same.returncode == 0 and "1 passed" in same.stdout, same.stdout[-3000:]

    # one tensor of the checkpoint 1% larger: the text tower drifts, the image tower does not
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = "module.bert.encoder.layer.0.intermediate.dense.weight"
    state["state_dict"][key] = state["state_dict"][key] * 1.01
    torch.save(state, ckpt)
    changed = _suite(*common)
    assert changed.returncode == 1, changed.stdout[-3000:]
    assert "golden-cn-clip-rn50 (fp32) fails its gate" in changed.stdout
    assert "min cosine" in changed.stdout and "top-1" in changed.stdout
    text_row = next(line for line in changed.stdout.splitlines() if line.startswith("text "))
    assert "FAIL" in text_row and "the checkpoint differs from the one the goldens were recorded from" in changed.stdout


def test_example_gate_holds_the_published_probabilities():
    """The ViT-B/16 expectation as published passes; off by more than the tolerance, or another winner, fails."""
    spec = load_example_specs(REPO / "expected" / "example" / "api-example.yaml")["cn-clip-vit-b-16"]
    published = list(spec.probabilities)
    assert check_example(spec, published, "fp32").ok
    onnx = [1.2252e-03, 5.2874e-02, 6.7116e-04, 9.4523e-01]  # the same model exported to ONNX (deployment.md)
    assert check_example(spec, onnx, "fp16").ok
    off = [*published[:2], published[2] + 0.002, published[3] - 0.002]
    report = check_example(spec, off, "fp32")
    assert not report.ok and "FAIL" in report.table()
    assert check_example(spec, off, "bf16").ok  # bf16: reported, only the argmax is gated
    swapped = [published[0], published[3], published[2], published[1]]
    assert not check_example(spec, swapped, "bf16").ok


NO_CN_CLIP_PLUGIN = '''
"""Test plugin: the reference implementation is not installed."""
import sys

sys.modules["cn_clip"] = None  # makes `import cn_clip...` raise ImportError
'''


def test_parity_case_skips_in_one_line_without_the_reference(tmp_path):
    (tmp_path / "no_cn_clip.py").write_text(NO_CN_CLIP_PLUGIN, encoding="utf-8")
    out = _suite("-k", "parity-fixture-tiny and not onnx", "-p", "no_cn_clip", pythonpath=str(tmp_path), offline=False)
    assert out.returncode == 0 and "2 skipped" in out.stdout, out.stdout[-3000:]  # the ViT and the ResNet fixture
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("SKIPPED")]  # one line for both
    assert "cn_clip is not installed" in line and "pip install --no-deps cn_clip==1.6.0" in line
