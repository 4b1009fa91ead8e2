"""The ChineseCLIP backend (transformers format) and the reference-to-transformers conversion.

Nothing is downloaded. Two kinds of folders:

* a tiny random ``ChineseCLIPModel`` written by transformers' own ``save_pretrained`` (with its
  default image processor: shortest-side resize and centre crop), against transformers used
  directly, under both protocols;
* random reference-format checkpoints (cn_clip models, every float tensor drawn, saved as its
  training code saves them) converted by ``qaclip_harness.convert.hf``: the same features through
  the native backend, the ChineseCLIP backend and cn_clip itself.

Tests that need transformers skip with one line without it (the optional ``chineseclip`` extra).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qaclip_core.errors import CheckpointError
from qaclip_core.registry import get_card
from tests.conftest import CAPTIONS, real_images, require_reference
from tests.random_weights import randomise_

SKIP = "needs transformers: pip install 'qaclip-core[chineseclip]'"
RES = 32
# Same fp32 arithmetic in another operation order (tests/core/test_parity_model.py uses the same bound
# against cn_clip); measured here: below 2e-7. A conversion error moves features by 1e-2 or more.
TOL = 1e-5
FIXTURE_ARCH = "ViT-fixture@BERT-fixture"


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip: it is the optional ``chineseclip`` extra."""
    return pytest.importorskip("transformers", reason=SKIP, exc_type=ImportError)


@pytest.fixture
def offline(monkeypatch):
    """No network: everything must come from disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _norm(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def _images():
    rng = np.random.default_rng(0)
    rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    return [rgb(48, 40), rgb(33, 90), Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)), rgb(RES, RES)]


# --------------------------------------------------------------------------------------------
# a folder written by transformers itself


@pytest.fixture(scope="module")
def tiny_dir(tf, tmp_path_factory) -> Path:
    """A tiny random ChineseCLIPModel with the Chinese BERT tokenizer and transformers' default image processor."""
    from qaclip_core.tokenizer import VOCAB_PATH

    vocab_dir = tmp_path_factory.mktemp("vocab")
    shutil.copyfile(VOCAB_PATH, vocab_dir / "vocab.txt")
    (vocab_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    tokenizer = tf.AutoTokenizer.from_pretrained(str(vocab_dir))
    config = tf.ChineseCLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": RES,
            "patch_size": 8,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    model = randomise_(tf.ChineseCLIPModel(config).eval(), seed=1)
    out = tmp_path_factory.mktemp("tiny-chineseclip")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tf.ChineseCLIPImageProcessor(size={"shortest_edge": RES}, crop_size={"height": RES, "width": RES}).save_pretrained(
        out
    )
    return out


def _direct(tf, folder):
    model = tf.ChineseCLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = tf.ChineseCLIPProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor


def test_processor_protocol_equals_transformers(tf, tiny_dir, offline):
    """What a user of ChineseCLIPProcessor gets, feature for feature."""
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    model, processor = _direct(tf, tiny_dir)
    images = _images()
    inputs = processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    enc = ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol="processor", device="cpu")
    tokens = enc.tokenize(CAPTIONS)
    assert torch.equal(tokens, inputs["input_ids"])
    pixels = torch.stack([enc.preprocess(im) for im in images])
    assert torch.equal(pixels, inputs["pixel_values"].float())
    text, image = _norm(enc.encode_text(tokens)), _norm(enc.encode_image(pixels))
    assert (text - out.text_embeds).abs().max() <= TOL
    assert (image - out.image_embeds).abs().max() <= TOL
    # the features are far apart compared with the tolerance: the comparison can fail
    assert torch.cdist(image, image).add(torch.eye(len(image))).min() > 0.02
    assert torch.cdist(text, text).add(torch.eye(len(text))).min() > 0.02


def test_reference_protocol_equals_transformers_on_reference_inputs(tf, tiny_dir, offline):
    """The reference protocol: our pixels and token ids, fed to ChineseCLIPModel as transformers would."""
    import qaclip_core
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    model, _ = _direct(tf, tiny_dir)
    enc = ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol="reference", device="cpu")
    images = real_images()
    pixels = torch.stack([enc.preprocess(im) for im in images])
    assert torch.equal(pixels, torch.stack([qaclip_core.image_transform(RES)(im) for im in images]))
    tokens = enc.tokenize(CAPTIONS)
    assert torch.equal(tokens, qaclip_core.tokenize([qaclip_core.tokenizer.preprocess_text(c) for c in CAPTIONS]))
    with torch.no_grad():
        ref_img = _norm(model.get_image_features(pixel_values=pixels).pooler_output)
        ref_txt = _norm(model.get_text_features(input_ids=tokens, attention_mask=(tokens != 0).long()).pooler_output)
    assert (_norm(enc.encode_image(pixels)) - ref_img).abs().max() <= TOL
    assert (_norm(enc.encode_text(tokens)) - ref_txt).abs().max() <= TOL


def test_the_processor_really_differs_and_says_how(tf, tiny_dir, offline):
    """Crop and aspect-ratio resize of transformers' default config are reported, and change the pixels."""
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    ref = ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol="reference", device="cpu")
    proc = ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol="processor", device="cpu")
    assert ref.differences == []
    text = "\n".join(proc.differences)
    assert f"shortest side to {RES}" in text and f"centre crop to {RES}x{RES}" in text
    assert "curly quotes" in text and "padding to the longest" in text and "truncation at 64 tokens" in text
    wide = _images()[1]
    assert not torch.allclose(ref.preprocess(wide), proc.preprocess(wide), atol=0.1)
    # the quotes of one caption: [UNK] for the processor, '"' for the reference
    assert not torch.equal(ref.tokenize(["“你好”"])[:, :5], proc.tokenize(["“你好”"])[:, :5])


def test_differences_read_from_the_configuration(tf):
    from qaclip_harness.backends.chineseclip import processor_differences
    from qaclip_harness.convert.hf import image_processor

    squash = image_processor(tf, 224)
    pil = getattr(tf, "ChineseCLIPImageProcessorPil", None)
    lowercase = _bert_tokenizer(tf, do_lower_case=True)
    diffs = processor_differences(squash, lowercase, 224, 52, 52)
    assert not any("crop" in d or "aspect" in d or "lower-casing" in d or "truncation" in d for d in diffs), diffs
    assert any("curly quotes" in d for d in diffs)
    if pil is not None:  # the PIL backend resamples as the reference does
        pil_squash = pil(size={"height": 224, "width": 224}, resample=3, do_center_crop=False)
        assert not any("torchvision" in d for d in processor_differences(pil_squash, lowercase, 224, 52, 52))
    other = tf.ChineseCLIPImageProcessor(
        size={"height": 256, "width": 256},
        resample=2,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        image_mean=[0.5, 0.5, 0.5],
    )
    diffs = processor_differences(other, _bert_tokenizer(tf, do_lower_case=False), 224, 52, 512)
    for expected in (
        "resize to 256x256",
        "bilinear resampling",
        "centre crop to 224x224",
        "mean [0.5, 0.5, 0.5]",
        "no lower-casing",
        "accents kept",
        "truncation at 512 tokens",
    ):
        assert any(expected in d for d in diffs), (expected, diffs)


def _bert_tokenizer(tf, do_lower_case: bool):
    import tempfile

    from qaclip_harness.convert.hf import write_tokenizer_files

    folder = Path(tempfile.mkdtemp())
    write_tokenizer_files(folder, 512)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["do_lower_case"] = do_lower_case
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tf.AutoTokenizer.from_pretrained(str(folder))


def test_eval_pipeline_on_both_protocols(tiny_dir, offline):
    """Through the suite's feature extraction: batched, length-sorted text equals one batch."""
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder
    from qaclip_harness.eval.features import encode_texts

    for protocol in ("reference", "processor"):
        enc = ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol=protocol, device="cpu")
        batched = encode_texts(enc, CAPTIONS, batch_size=3, progress=False)
        whole = _norm(enc.encode_text(enc.tokenize(CAPTIONS)))
        assert (batched - whole).abs().max() <= TOL


def test_missing_weights_are_refused(tf, tiny_dir, tmp_path, offline):
    """transformers fills missing weights at random with a warning; the backend refuses the folder."""
    from safetensors.torch import load_file, save_file

    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    folder = tmp_path / "broken"
    shutil.copytree(tiny_dir, folder)
    sd = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in sd if "text_projection" in k)
    del sd[dropped]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing keys.*text_projection"):
        ChineseCLIPEncoder.from_pretrained(folder, device="cpu")


def test_card_resolution_must_match_the_folder(tiny_dir, offline):
    from qaclip_harness.backends import load_encoder

    with pytest.raises(CheckpointError, match=r"image_size 32.*224 px"):
        load_encoder(get_card("hf-qa-clip-vit-b-16"), tiny_dir, device="cpu")


def test_unknown_protocol(tiny_dir):
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder

    with pytest.raises(ValueError, match="unknown preprocessing protocol 'users'"):
        ChineseCLIPEncoder.from_pretrained(tiny_dir, protocol="users")


# --------------------------------------------------------------------------------------------
# conversion of reference-format checkpoints


def _reference_checkpoint(arch: str, path: Path, seed: int = 0):
    """A cn_clip model of ``arch`` with every float tensor drawn, saved as its training code saves it."""
    require_reference()
    from tests.reference_models import reference_model, save_reference_checkpoint

    if arch == FIXTURE_ARCH:  # no cn_clip config for the fixture: its CLIP class from our config
        import contextlib
        import io

        require_reference()
        from cn_clip.clip.model import CLIP as RefCLIP

        from qaclip_core.model.config import reference_kwargs

        with contextlib.redirect_stdout(io.StringIO()):
            model = RefCLIP(**reference_kwargs(arch))
    else:
        model = reference_model(arch, seed)
    model = randomise_(model.float().eval(), seed)
    save_reference_checkpoint(model, path)
    return model, path


@pytest.mark.parametrize(
    "arch",
    [FIXTURE_ARCH, pytest.param("ViT-B-16@RoBERTa-wwm-ext-base-chinese", marks=pytest.mark.slow)],
)
def test_conversion_gives_the_same_features_through_both_backends(tf, arch, tmp_path, offline):
    """A real-size architecture too (about a minute here: most of it drawing, saving and converting 188M weights)."""
    import qaclip_core
    from qaclip_harness.backends.chineseclip import ChineseCLIPEncoder
    from qaclip_harness.backends.native import NativeEncoder
    from qaclip_harness.convert.hf import write_hf_folder
    from qaclip_harness.gates.format_parity import compare_encoders, encode_probe, probe_inputs

    ref, ckpt = _reference_checkpoint(arch, tmp_path / "ref.pt")
    folder = write_hf_folder(ckpt, tmp_path / "hf")  # the architecture is inferred from the weights
    native = NativeEncoder(qaclip_core.load_checkpoint(ckpt, arch), name="pt")
    hf = ChineseCLIPEncoder.from_pretrained(folder, protocol="reference", device="cpu", precision="fp32")
    images, captions = probe_inputs()
    if arch == FIXTURE_ARCH:  # the tests' images too (real_images()[1] is the probe's first drawing again)
        images, captions = images + real_images()[2:], captions + CAPTIONS
    else:  # a few: at full size each image costs seconds per model
        images = images[:4]
    parity = compare_encoders(native, hf, images, captions)
    assert parity.within(TOL), parity
    # and the oracle itself, on the same pixels and tokens
    pixels, tokens, img, txt = encode_probe(hf, images, captions)
    with torch.no_grad():
        assert (_norm(ref.encode_image(pixels)) - img).abs().max() <= TOL
        assert (_norm(ref.encode_text(tokens)) - txt).abs().max() <= TOL
    assert torch.cdist(img, img).add(torch.eye(len(img))).min() > 100 * TOL  # features far apart: it can fail


def test_conversion_layout_matches_transformers_for_every_vit_architecture(tf):
    """Every key and shape, for every ViT architecture of the registry (on the meta device: shapes only)."""
    from qaclip_core.model.clip import CLIP
    from qaclip_core.model.config import arch_config
    from qaclip_core.registry import all_cards
    from qaclip_harness.convert.hf import hf_config, to_hf_state_dict

    archs = sorted({c.arch for c in all_cards() if c.adapter != "altclip" and arch_config(c.arch).vision.kind == "vit"})
    assert "ViT-H-14@RoBERTa-wwm-ext-large-chinese" in archs  # head width 80, not 64
    for arch in archs:
        with torch.device("meta"):
            ours = CLIP(arch_config(arch))
            theirs = tf.ChineseCLIPModel(tf.ChineseCLIPConfig(**hf_config(arch)))
        mapped = to_hf_state_dict(ours.state_dict(), arch)
        expected = theirs.state_dict()
        assert set(mapped) == set(expected), (arch, set(mapped) ^ set(expected))
        assert all(mapped[k].shape == expected[k].shape for k in mapped), arch
        assert theirs.config.vision_config.num_attention_heads == arch_config(arch).vision.heads


def test_conversion_refuses_what_it_cannot_convert(tmp_path):
    from qaclip_core.model.clip import create_model
    from qaclip_harness.convert.hf import to_hf_state_dict

    rn50 = "RN50@RBT3-chinese"
    with pytest.raises(CheckpointError, match="only a ViT vision tower"):
        to_hf_state_dict({}, rn50)
    with torch.device("meta"):
        sd = create_model(FIXTURE_ARCH).state_dict()
    sd.pop("visual.proj")
    with pytest.raises(CheckpointError, match=r"1 missing keys: visual.proj"):
        to_hf_state_dict(sd, FIXTURE_ARCH)


def test_conversion_command_line(tf, tmp_path, offline):
    from qaclip_harness.fetch.weights import folder_complete
    from qaclip_harness.fixture import CHECKPOINT

    out = subprocess.run(
        [sys.executable, "-m", "qaclip_harness.convert.hf", str(CHECKPOINT), str(tmp_path / "hf"), "--dtype", "fp16"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert folder_complete("chineseclip", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "chinese_clip" and config["vision_config"]["image_size"] == 64


def test_transformers_conversion_script_as_oracle(tf, tmp_path):
    """Where transformers ships its Chinese-CLIP conversion script (4.x), both conversions give the same tensors."""
    oracle = pytest.importorskip(
        "transformers.models.chinese_clip.convert_chinese_clip_original_pytorch_to_hf",
        reason="this transformers version ships no Chinese-CLIP conversion script",
    )
    from safetensors.torch import load_file

    from qaclip_harness.convert.hf import write_hf_folder

    _, ckpt = _reference_checkpoint(FIXTURE_ARCH, tmp_path / "ref.pt")
    ours = write_hf_folder(ckpt, tmp_path / "ours")
    oracle.convert_chinese_clip_checkpoint(str(ckpt), str(tmp_path / "theirs"), str(ours / "config.json"))
    theirs = tf.ChineseCLIPModel.from_pretrained(tmp_path / "theirs").state_dict()
    mine = load_file(str(ours / "model.safetensors"))
    for key, value in mine.items():
        assert torch.equal(value, theirs[key].to(value.dtype)), key


# --------------------------------------------------------------------------------------------
# registry, expected numbers, optional dependency


def test_cards_name_their_original():
    from qaclip_core.registry import all_cards

    hf = [c for c in all_cards() if c.adapter == "chineseclip"]
    assert {c.preprocessing for c in hf} == {"reference", "processor"}
    for card in hf:
        original = get_card(card.original)
        assert original.adapter == "native" and (original.arch, original.resolution) == (card.arch, card.resolution)
        assert card.name in (f"hf-{original.name}", f"hf-{original.name}-processor")
        assert card.name.endswith("-processor") == (card.preprocessing == "processor")


def test_expected_numbers_of_the_transformers_copies_are_the_originals():
    from qaclip_harness.expected import load_expected

    cases = {c.id: c for c in load_expected(Path(__file__).resolve().parents[2] / "expected")}
    hf = [c for c in cases.values() if c.model.startswith("hf-")]
    assert len(hf) == 2 * 6 * 4 + 2 * 2  # six checkpoints, two protocols, four datasets; the fixture's two
    for case in hf:
        card = get_card(case.model)
        original = cases[f"{case.dataset}-{card.original}"]
        assert (case.values, case.gate) == (original.values, original.gate), case.id
        assert case.gated == (card.preprocessing == "reference"), case.id


def test_qa_clip_vit_l_14_336_and_the_second_source():
    from qaclip_harness.expected import load_expected

    cases = {c.id: c for c in load_expected(Path(__file__).resolve().parents[2] / "expected")}
    for ds in ("flickr30k-cn", "muge", "coco-cn", "imagenet"):
        qa = cases[f"{ds}-qa-clip-vit-l-14-336"]
        assert qa.gate == "qa-clip-readme-latest" and qa.gated
        cn = cases[f"{ds}-cn-clip-vit-l-14-336"]
        assert cn.gate == "cn-clip-results" and set(cn.values) == {"cn-clip-results", "qa-clip-readme-latest"}
    assert cases["flickr30k-cn-qa-clip-vit-l-14-336"].gate_values["t2i_r1"] == 71.1
    assert cases["imagenet-qa-clip-vit-l-14-336"].gate_values == {"top1": 58.1}
    assert cases["coco-cn-cn-clip-vit-l-14-336"].values["qa-clip-readme-latest"]["i2t_r1"] == 63.6
    card = get_card("qa-clip-vit-l-14-336")
    assert (card.arch, card.resolution, card.filename) == (
        "ViT-L-14-336@RoBERTa-wwm-ext-base-chinese",
        336,
        "QA-CLIP-large-336.pt",
    )


def test_bad_preprocessing_value_names_the_file(tmp_path):
    from qaclip_core.registry import register_cards

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - {name: x, family: f, display: X, vision: ViT-B-16, text: RBT3-chinese, "
        "resolution: 224, adapter: chineseclip, preprocessing: users}\n"
    )
    with pytest.raises(ValueError, match=r"bad.yaml: card 'x' has preprocessing 'users'"):
        register_cards(bad)


def test_without_transformers_import_error(monkeypatch, tmp_path):
    """Loading or fetching without transformers names the extra to install."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.fetch.weights import fetch_weights

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    card = get_card("hf-qa-clip-vit-b-16")
    with pytest.raises(ImportError, match=r"pip install 'qaclip-core\[chineseclip\]'"):
        load_encoder(card, tmp_path)
    with pytest.raises(ImportError, match=r"qaclip-core\[chineseclip\]"):
        fetch_weights(card, download_root=tmp_path)


def test_import_does_not_need_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None; "
        "import qaclip_harness.backends, qaclip_harness.backends.chineseclip, qaclip_harness.convert.hf, "
        "qaclip_harness.gates.format_parity; qaclip_harness.backends.backend('chineseclip')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_models_command_lists_the_new_cards():
    out = subprocess.run(
        [sys.executable, "-m", "qaclip_harness", "models"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names[:3] == ["ViT-B-16", "ViT-L-14", "RN50"]
    for name in ("qa-clip-vit-l-14-336", "hf-qa-clip-vit-b-16", "hf-qa-clip-vit-l-14-processor", "hf-cn-clip-vit-h-14"):
        assert name in names
    assert not any("fixture" in n for n in names)


def test_throughput_model_holds_the_benchmarked_weights(tf):
    """The transformers model of the throughput cases computes what our model of the same group computes."""
    from qaclip_harness.pytest_plugin.test_throughput_chineseclip import _model, _tokenizer
    from qaclip_harness.pytest_plugin.throughput_support import models, realistic_captions

    ours, _ = models(FIXTURE_ARCH, "cpu", "fp32")
    theirs = _model(FIXTURE_ARCH, "cpu", "fp32")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    enc = _tokenizer()(realistic_captions(8), padding=True, return_tensors="pt")
    with torch.no_grad():
        img = theirs.get_image_features(pixel_values=images).pooler_output
        txt = theirs.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        assert (_norm(img) - _norm(ours.encode_image(images))).abs().max() <= TOL
        assert (_norm(txt) - _norm(ours.encode_text(enc["input_ids"]))).abs().max() <= TOL


@pytest.mark.slow  # about 50 s: a pytest run in a subprocess; the cases themselves also run in the tests env
def test_fixture_run_reports_both_protocols_side_by_side(tf, tmp_path):
    """The offline suite: the fixture's transformers copy, gated under the reference protocol and reported
    under ChineseCLIPProcessor with its differences, beside the .pt; and its parity case."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-m",
            "not throughput",
            "-k",
            "fixture-shapes-cls or parity-hf-fixture",
            "-q",
            "-p",
            "no:cacheprovider",
            "--report",
            str(tmp_path / "report"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    results = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["results"]
    status = {(r["dataset"], r["model"]): r for r in results}
    assert {k: r["status"] for k, r in status.items()} == {
        ("fixture-shapes-cls", "fixture-tiny"): "passed",
        ("fixture-shapes-cls", "hf-fixture-tiny"): "passed",
        ("fixture-shapes-cls", "hf-fixture-tiny-processor"): "reported",
        ("fixture-shapes-cls", "fixture-tiny-rn"): "passed",
        ("parity-hf", "fixture-tiny"): "passed",
    }
    proc = status[("fixture-shapes-cls", "hf-fixture-tiny-processor")]
    assert "differs from the reference protocol in:" in proc["reason"] and "curly quotes" in proc["reason"]
    assert {c["metric"] for c in proc["checks"]} == {"top1", "top5", "true_prob"}
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| hf-fixture-tiny-processor |" in md and "- hf-fixture-tiny-processor: differs from the reference" in md
