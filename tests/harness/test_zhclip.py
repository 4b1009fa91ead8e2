"""The ZH-CLIP backend on random checkpoints in the model's own layout (tests/zhclip_folder.py).

Nothing is downloaded. The folders are written from transformers' CLIPVisionModel and BertModel with
every tensor drawn, and the heads under the repository's documented names; the features are checked
against the model's maths computed here independently (transformers' towers run directly, the masked
mean, exact GELU and the projections written out), loading is strict, and each way the heads could be
wrong (class-token pooling, a mean over padding, tanh GELU, a dropped bias) is shown to be caught.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from qaclip_core.errors import CheckpointError, DownloadError
from qaclip_core.registry import get_card
from tests.conftest import CAPTIONS, real_images
from tests.zhclip_folder import JOINT, TEXT, VISION, write_zhclip_folder, zhclip_state_dict

SKIP = "needs transformers: pip install 'qaclip-core[zhclip]'"
CARD = "zh-clip-vit-l-14"
# the same fp32 arithmetic in another operation order (as the ChineseCLIP tests); a head that is wrong moves
# the features by 1e-2 or more (measured below for each alternative)
TOL = 1e-5


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip: it is the optional ``zhclip`` extra."""
    return pytest.importorskip("transformers", reason=SKIP, exc_type=ImportError)


@pytest.fixture(scope="module")
def folder(tf, tmp_path_factory) -> Path:
    return write_zhclip_folder(tf, tmp_path_factory.mktemp("zhclip") / "zh-clip-vit-roberta-large-patch14")


@pytest.fixture(scope="module")
def encoder(folder):
    from qaclip_harness.backends import load_encoder

    return load_encoder(get_card(CARD), folder, device="cpu")


def _norm(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _towers(tf, folder: Path):
    """transformers' own towers holding the folder's weights (strictly), without the backend's model class."""
    from qaclip_core.tokenizer import VOCAB_PATH

    sd = _state(folder)
    tower = tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION))
    vision = getattr(tower, "vision_model", tower)
    vision.load_state_dict(_sub(sd, "vision_model."), strict=True)
    vocab = len(Path(VOCAB_PATH).read_text(encoding="utf-8").splitlines())
    bert = tf.BertModel(tf.BertConfig(vocab_size=vocab, **TEXT))
    bert.load_state_dict(_sub(sd, "text_model."), strict=True)
    return vision.eval(), bert.eval(), sd


def _gelu_exact(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _image_heads(vision, sd, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        pooled = vision(pixel_values=pixels).pooler_output
    w, b = sd["visual_projection.weight"], sd["visual_projection.bias"]
    return {"true": pooled @ w.T + b, "no bias": pooled @ w.T}


def _text_heads(bert, sd, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    w0, w2 = sd["text_projection.0.weight"], sd["text_projection.2.weight"]

    def head(pooled, gelu=_gelu_exact):
        return gelu(pooled @ w0.T) @ w2.T

    mean = (hidden * m).sum(1) / m.sum(1)
    return {
        "true": head(mean),
        "class token": head(hidden[:, 0]),
        "mean over padding": head(hidden.mean(1)),
        "tanh GELU": head(mean, lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    }


def test_image_features_are_the_models_maths(tf, folder, encoder):
    """The pooled class token (post-LayerNorm) through a Linear with bias, on the processor's pixels."""
    vision, _, sd = _towers(tf, folder)
    # the PIL backend: CLIPImageProcessor as transformers 4 ran it when ZH-CLIP was published (5 defaults to
    # torchvision, which moves a pixel by up to 0.015 here)
    processor = (getattr(tf, "CLIPImageProcessorPil", None) or tf.CLIPImageProcessor).from_pretrained(str(folder))
    images = real_images()
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    theirs = torch.as_tensor(processor(images=images, return_tensors="pt")["pixel_values"]).float()
    assert (pixels - theirs).abs().max() <= 1e-5  # the folder's CLIPImageProcessor, as its processor runs it
    heads = _image_heads(vision, sd, pixels)
    ours = _norm(encoder.encode_image(pixels))
    assert (ours - _norm(heads["true"])).abs().max() <= TOL
    assert (ours - _norm(heads["no bias"])).abs().max() > 100 * TOL  # a dropped bias would be caught
    assert torch.cdist(ours, ours).add(torch.eye(len(ours))).min() > 0.01  # distinct features: the check can fail


def test_text_features_are_the_masked_mean_through_the_head(tf, folder, encoder):
    """Masked mean of the last hidden states, Linear, exact GELU, Linear; padding changes nothing."""
    _, bert, sd = _towers(tf, folder)
    tokenizer = tf.BertTokenizer.from_pretrained(str(folder))
    enc = tokenizer(CAPTIONS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    heads = _text_heads(bert, sd, enc["input_ids"], enc["attention_mask"])
    tokens = encoder.tokenize(CAPTIONS)
    assert tokens.shape == (len(CAPTIONS), 77)
    assert torch.equal(tokens[:, : enc["input_ids"].shape[1]], enc["input_ids"])  # the same ids, padded further
    ours = _norm(encoder.encode_text(tokens))
    assert (ours - _norm(heads["true"])).abs().max() <= TOL
    for wrong in ("class token", "mean over padding", "tanh GELU"):
        assert (ours - _norm(heads[wrong])).abs().max() > 10 * TOL, wrong  # each would be caught
    assert (_norm(encoder.encode_text(enc["input_ids"])) - ours).abs().max() <= TOL  # padded to 77 or to the longest


def test_the_example_scores_rank_as_its_readme_computes_them(tf, folder, encoder):
    """Unnormalised dot products softmaxed over labels (the README's example) from our features."""
    vision, bert, sd = _towers(tf, folder)
    image = real_images()[0]
    labels = ["一只猫", "一只狗", "杰尼龟"]
    pixels = encoder.preprocess(image).unsqueeze(0)
    tokenizer = tf.BertTokenizer.from_pretrained(str(folder))
    enc = tokenizer(labels, padding=True, return_tensors="pt")
    expected = (
        _image_heads(vision, sd, pixels)["true"]
        @ _text_heads(bert, sd, enc["input_ids"], enc["attention_mask"])["true"].T
    ).softmax(-1)
    ours = (encoder.encode_image(pixels) @ encoder.encode_text(encoder.tokenize(labels)).T).softmax(-1)
    assert (ours - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_precision_loads_and_stays_close(folder, encoder, precision, dtype):
    from qaclip_harness.backends import load_encoder

    half = load_encoder(get_card(CARD), folder, device="cpu", precision=precision)
    assert half.dtype == dtype
    pixels = torch.stack([encoder.preprocess(im) for im in real_images()[:3]])
    drift = (_norm(half.encode_image(pixels)) - _norm(encoder.encode_image(pixels))).abs().max()
    assert 0 < drift < 0.05  # rounded, not broken


def test_position_ids_saved_by_older_transformers_are_accepted(tf, tmp_path, encoder):
    sd = zhclip_state_dict(tf, VISION, TEXT, JOINT)
    sd["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    sd["text_model.embeddings.position_ids"] = torch.arange(96).unsqueeze(0)
    folder = write_zhclip_folder(tf, tmp_path / "old", state=sd, weights="pytorch_model.bin")
    from qaclip_harness.backends import load_encoder

    old = load_encoder(get_card(CARD), folder, device="cpu")
    tokens = encoder.tokenize(CAPTIONS[:4])
    assert torch.equal(old.encode_text(tokens), encoder.encode_text(tokens))  # the same seed: the same weights


def _broken_folder(tf, tmp_path: Path, edit) -> Path:
    sd = zhclip_state_dict(tf, VISION, TEXT, JOINT)
    edit(sd)
    return write_zhclip_folder(tf, tmp_path / "broken", state=sd)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda sd: sd.pop("text_projection.2.weight"), "1 missing: text_projection.2.weight"),
        (lambda sd: sd.pop("text_model.pooler.dense.weight"), "1 missing: text_model.pooler.dense.weight"),
        (lambda sd: sd.update(logit_scale=torch.tensor(4.6)), "1 unexpected: logit_scale"),
        (
            lambda sd: sd.update({"visual_projection.bias": torch.zeros(7)}),
            "visual_projection.bias [7] in the weights, [24] by config.json",
        ),
        (
            lambda sd: sd["text_projection.0.weight"].fill_(float("nan")),
            "NaN or infinite values: text_projection.0.weight",
        ),
        (
            lambda sd: sd.update({"vision_model.embeddings.position_ids": torch.arange(17).flip(0)}),
            "vision_model.embeddings.position_ids is not 0..16",
        ),
    ],
)
def test_strict_loading_names_what_is_wrong(tf, tmp_path, edit, needle):
    from qaclip_harness.backends import load_encoder

    folder = _broken_folder(tf, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        load_encoder(get_card(CARD), folder, device="cpu")
    assert needle in str(info.value) and "model.safetensors" in str(info.value)


def test_a_config_that_is_not_zhclips_is_named(tf, tmp_path):
    import json

    from qaclip_harness.backends import load_encoder

    folder = write_zhclip_folder(tf, tmp_path / "m")
    doc = json.loads((folder / "config.json").read_text())
    doc["text_config"]["model_type"] = "xlm-roberta"
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config.json: text_config.model_type 'xlm-roberta'"):
        load_encoder(get_card(CARD), folder, device="cpu")
    doc["text_config"]["model_type"], doc["hidden_size"] = "bert", 25
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"visual_projection.weight \[24, 32\] in the weights, \[25, 32\]"):
        load_encoder(get_card(CARD), folder, device="cpu")


def test_pickled_code_is_refused(tf, tmp_path):
    import os

    from qaclip_harness.backends import load_encoder

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    folder = write_zhclip_folder(tf, tmp_path / "m", weights="pytorch_model.bin")
    torch.save(
        {**torch.load(folder / "pytorch_model.bin", weights_only=True), "x": Evil()}, folder / "pytorch_model.bin"
    )
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused"):
        load_encoder(get_card(CARD), folder, device="cpu")
    assert not (tmp_path / "PWNED").exists()


def test_the_card_and_its_fetch_offline(tmp_path, monkeypatch):
    """The card names the published repo; offline, fetching names the folder to fill by hand."""
    from qaclip_harness.backends import backend
    from qaclip_harness.fetch.weights import fetch_weights

    card = get_card(CARD)
    assert (card.adapter, card.hub_repo, card.resolution) == ("zhclip", "thu-ml/zh-clip-vit-roberta-large-patch14", 224)
    assert backend(card.adapter).module.__name__ == "qaclip_harness.backends.zhclip"
    pytest.importorskip("transformers", reason=SKIP, exc_type=ImportError)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        fetch_weights(card, download_root=tmp_path)
    msg = str(info.value)
    assert (
        "thu-ml/zh-clip-vit-roberta-large-patch14" in msg and str(tmp_path / "zh-clip-vit-roberta-large-patch14") in msg
    )


def test_import_does_not_need_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None; "
        "import qaclip_harness.backends.zhclip as z; from qaclip_harness.backends import backend; backend('zhclip')\n"
        "try:\n    z.import_transformers()\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'qaclip-core[zhclip]'" in out.stdout


def test_the_encoder_sees_any_image_mode(encoder):
    for mode in ("L", "RGBA", "P", "CMYK"):
        px = encoder.preprocess(Image.new(mode, (45, 30)))
        assert px.shape == (3, 32, 32)


def test_its_published_numbers_are_expected_files_that_say_what_is_unknown():
    """Every published ZH-CLIP number is a case of the card; every tolerance cites the protocol evidence."""
    from qaclip_harness.expected import check_against_cards, check_against_catalog, load_expected_paths

    files = sorted((Path(__file__).resolve().parents[2] / "expected").glob("zh-clip-*.yaml"))
    cases = load_expected_paths(files)
    check_against_catalog(cases)
    check_against_cards(cases)
    assert {c.model for c in cases} == {CARD}
    assert {c.dataset for c in cases} == {
        "coco-cn",
        "flickr30k-cn",
        "muge",
        "imagenet",
        "cifar-10",
        "cifar100",
        "dtd",
        "eurosat",
        "fer-2013",
        "fgvc-aircraft",
        "kitti-distance",
        "mnist",
        "patch-camelyon",
        "voc-2007",
    }
    by = {c.dataset: c for c in cases}
    assert by["flickr30k-cn"].gate_values["t2i_r1"] == 69.64 and by["coco-cn"].gate_values["i2t_mean_recall"] == 85.03
    assert set(by["muge"].gate_values) == {"t2i_r1", "t2i_r5", "t2i_r10", "t2i_mean_recall"}  # t2i only is published
    assert by["imagenet"].gate_values == {"top1": 56.87}
    assert {d for d, c in by.items() if not c.gated} == {"kitti-distance", "patch-camelyon", "voc-2007"}
    for case in cases:
        for metric in case.gate_values:
            why = case.tolerance(metric).why
            assert "the protocol is not known" in why and "CN-CLIP ViT-L/14" in why, (case.id, metric)
