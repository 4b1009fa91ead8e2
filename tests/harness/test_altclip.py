"""The AltCLIP adapter against transformers used directly, on a tiny random AltCLIP saved to disk.

Nothing is downloaded: the tokenizer is a small XLM-R-style Unigram model built here, the image
processor a CLIPImageProcessor at 32 px, and the weights random. Tests that need transformers
skip without it (it is the optional ``altclip`` extra); the ImportError test runs either way.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qaclip_core.errors import DownloadError
from qaclip_core.registry import get_card

CAPTIONS = [
    "一只橘猫坐在窗台上",
    "两个小孩在海边的沙滩上玩耍，阳光明媚",
    "一辆白色的汽车停在城市街道上",
    "Cat 一只金毛犬躺在公园的草地上",
    "一盘热气腾腾的饺子摆放在木桌上。",
    "一位老人走过一座古老的石桥",
    "天空",
    "一群游客在山顶拍照，远处还有一座宝塔和一条蜿蜒的小河",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0..3: pad is 1, so ids == 0 are not padding
RES = 32


@pytest.fixture(scope="module")
def tf():
    """transformers, or skip: it is the optional ``altclip`` extra."""
    return pytest.importorskip("transformers")


def _tokenizer(tf):
    """An XLM-R tokenizer over a small Unigram vocabulary (the real one is 250k pieces)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    chars = sorted(set("".join(CAPTIONS)) - {" "} | set("catCAT"))
    vocab = [(s, 0.0) for s in SPECIALS] + [("▁", -2.0)] + [(c, -5.0) for c in chars] + [("<mask>", 0.0)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tf.XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


@pytest.fixture(scope="module")
def tiny_dir(tf, tmp_path_factory) -> Path:
    """A tiny random AltCLIP (model, image processor, tokenizer) saved in transformers format."""
    tokenizer = _tokenizer(tf)
    assert tokenizer.pad_token_id == 1 and tokenizer.bos_token_id == 0
    config = tf.AltCLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 96,
            "project_dim": 32,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
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
    torch.manual_seed(0)
    model = tf.AltCLIPModel(config).eval()
    with torch.no_grad():  # the default init (std 0.02) makes features nearly constant: spread them
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    image_processor = tf.CLIPImageProcessor(
        size={"shortest_edge": RES},
        crop_size={"height": RES, "width": RES},
        resample=3,
    )
    out = tmp_path_factory.mktemp("tiny-altclip")
    # saved piece by piece, as BAAI/AltCLIP is laid out: preprocessor_config.json, tokenizer files
    # (transformers 5's AltCLIPProcessor.save_pretrained would write processor_config.json instead)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


@pytest.fixture
def offline(monkeypatch):
    """No network: everything must come from disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    """The adapter over the tiny model, loaded with the network switched off."""
    from qaclip_harness.backends.altclip import AltCLIPEncoder

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        return AltCLIPEncoder.from_pretrained(tiny_dir, name="tiny-altclip", device="cpu", precision="fp32")
    finally:
        mp.undo()


def _images():
    rng = np.random.default_rng(0)
    rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    return [
        rgb(48, 40),  # portrait: resize the width to 32, crop the height
        rgb(33, 90),  # wide
        Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)),  # grey: converted to RGB
        Image.fromarray(rng.integers(0, 256, (40, 64, 4), dtype=np.uint8)),  # RGBA
        rgb(RES, RES),
    ]


def _reference(tf, tiny_dir):
    """AltCLIPModel and AltCLIPProcessor (PIL image backend, as AltCLIP's original processor) loaded directly."""
    model = tf.AltCLIPModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    major = int(tf.__version__.split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    processor = tf.AltCLIPProcessor.from_pretrained(tiny_dir, local_files_only=True, **backend)
    return model, processor


def _norm(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def test_card_and_dispatch(tiny_dir, offline):
    from qaclip_harness.backends import Encoder, load_encoder
    from qaclip_harness.backends.altclip import AltCLIPEncoder

    card = get_card("altclip-vit-l-14")
    assert (card.adapter, card.family, card.hub_repo, card.resolution) == ("altclip", "altclip", "BAAI/AltCLIP", 224)
    enc = load_encoder(card, tiny_dir, device="cpu", precision="fp32")
    assert isinstance(enc, AltCLIPEncoder) and isinstance(enc, Encoder)
    assert enc.name == "altclip-vit-l-14" and enc.device == torch.device("cpu") and enc.dtype == torch.float32


def test_features_match_transformers(tf, tiny_dir, encoder):
    model, processor = _reference(tf, tiny_dir)
    images = _images()
    inputs = processor(
        text=CAPTIONS, images=images, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs)

    tokens = encoder.tokenize(CAPTIONS)
    assert torch.equal(tokens, inputs["input_ids"])
    assert torch.equal(encoder.attention_mask(tokens), inputs["attention_mask"])
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    assert pixels.shape == (len(images), 3, RES, RES) and pixels.dtype == torch.float32
    assert torch.equal(pixels, inputs["pixel_values"].float())

    text = _norm(encoder.encode_text(tokens))
    image = _norm(encoder.encode_image(pixels))
    assert (text - out.text_embeds).abs().max() <= 1e-5
    assert (image - out.image_embeds).abs().max() <= 1e-5
    # captions and images are far apart compared with the tolerance: the comparison proves something
    assert torch.cdist(text, text).add(torch.eye(len(text))).min() > 0.02
    assert torch.cdist(image, image).add(torch.eye(len(image))).min() > 0.02


def test_padding_is_masked(tf, tiny_dir, encoder):
    """Batch-longest padding (AltCLIP's examples), fixed 77 and one text at a time agree."""
    model, processor = _reference(tf, tiny_dir)
    longest = processor(text=CAPTIONS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        # forward's text_embeds: the projected, normalised features, whatever get_text_features returns
        ref = model(**longest, pixel_values=torch.zeros(1, 3, RES, RES)).text_embeds
    batch = _norm(encoder.encode_text(encoder.tokenize(CAPTIONS)))
    single = torch.cat([_norm(encoder.encode_text(encoder.tokenize([c]))) for c in CAPTIONS])
    assert (batch - ref).abs().max() <= 1e-5
    assert (single - batch).abs().max() <= 1e-5


def test_processor_config_layout(tf, tiny_dir, encoder, tmp_path, offline):
    """A folder written by AltCLIPProcessor.save_pretrained (processor_config.json in transformers 5) loads the same."""
    from qaclip_harness.backends.altclip import AltCLIPEncoder
    from qaclip_harness.fetch.weights import folder_complete

    folder = tmp_path / "processor-layout"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny_dir / name, folder / name)
    _, processor = _reference(tf, tiny_dir)
    processor.save_pretrained(folder)
    assert folder_complete("altclip", folder)
    other = AltCLIPEncoder.from_pretrained(folder, device="cpu")
    image = _images()[0]
    assert torch.equal(other.preprocess(image), encoder.preprocess(image))
    assert torch.equal(other.tokenize(CAPTIONS), encoder.tokenize(CAPTIONS))


def test_no_lower_casing(encoder):
    """AltCLIP's tokenizer sees the text as written: Chinese-CLIP's normalisation is not applied."""
    upper, lower = encoder.tokenize(["Cat"]), encoder.tokenize(["cat"])
    assert not torch.equal(upper, lower)
    assert encoder.tokenize(["x" * 500]).shape == (1, 77)  # truncated to the context length
    assert int(encoder.tokenize(["天空"])[0, -1]) == encoder.pad_id == 1


def test_eval_pipeline(encoder):
    """Through the suite's feature extraction and retrieval metrics, on a tiny in-memory dataset."""
    from qaclip_harness.eval.features import encode_image_dataset, encode_texts
    from qaclip_harness.metrics.retrieval import evaluate_retrieval

    images = _images()
    image_ids = [100 + i for i in range(len(images))]

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return image_ids[i], encoder.preprocess(images[i])

    ids, image_feats = encode_image_dataset(encoder, Images(), batch_size=2, progress=False)
    assert ids == image_ids
    direct = _norm(encoder.encode_image(torch.stack([encoder.preprocess(im) for im in images])))
    assert (image_feats - direct).abs().max() <= 1e-5

    text_feats = encode_texts(encoder, CAPTIONS, batch_size=3, progress=False)
    assert (text_feats - _norm(encoder.encode_text(encoder.tokenize(CAPTIONS)))).abs().max() <= 1e-5

    text_ids = list(range(len(CAPTIONS)))
    gt = {t: [image_ids[t % len(images)]] for t in text_ids}
    result = evaluate_retrieval(ids, image_feats, text_ids, text_feats, gt, k=10)
    # brute force: the same recalls from the full score matrix
    scores = text_feats @ image_feats.t()
    for k in (1, 5):
        top = scores.topk(min(k, len(images)), dim=1).indices
        t2i = np.mean([any(image_ids[j] in gt[t] for j in top[t].tolist()) for t in text_ids]) * 100
        assert result.metrics[f"t2i_r{k}"] == pytest.approx(t2i)
        top_i = scores.t().topk(k, dim=1).indices
        i2t = np.mean([any(image_ids[i] in gt[t] for t in top_i[i].tolist()) for i in range(len(images))]) * 100
        assert result.metrics[f"i2t_r{k}"] == pytest.approx(i2t)


@pytest.mark.slow
def test_runner_on_fixture_data(encoder, tmp_path):
    """The suite's runner end to end (LMDB images through encoder.preprocess, both dataset kinds)."""
    from qaclip_harness.data.catalog import get_dataset, locate
    from qaclip_harness.eval.runner import evaluate_card
    from qaclip_harness.fixture.shapes import write_shapes_dataset

    write_shapes_dataset(tmp_path)
    for name, keys in (
        ("fixture-shapes", ("t2i_r1", "i2t_r10", "mean_recall")),
        ("fixture-shapes-cls", ("top1", "top5")),
    ):
        out = evaluate_card(encoder, locate(get_dataset(name), tmp_path), batch_size=16, progress=False)
        assert out.model == "tiny-altclip" and out.counts["images"] > 0
        for key in keys:
            assert 0.0 <= out.metrics[key] <= 100.0, (name, key, out.metrics)


def test_half_precision_runs(tiny_dir, encoder, offline):
    from qaclip_harness.backends.altclip import AltCLIPEncoder

    bf16 = AltCLIPEncoder.from_pretrained(tiny_dir, device="cpu", precision="bf16")
    assert bf16.dtype == torch.bfloat16
    tokens = encoder.tokenize(CAPTIONS[:3])
    out = bf16.encode_text(tokens)
    assert out.dtype == torch.bfloat16
    cos = (_norm(out) * _norm(encoder.encode_text(tokens))).sum(-1)
    assert cos.min() > 0.98


def test_missing_folder_is_a_checkpoint_error(tf, tmp_path, offline):
    from qaclip_core.errors import CheckpointError
    from qaclip_harness.backends.altclip import AltCLIPEncoder

    with pytest.raises(CheckpointError, match="does not exist"):
        AltCLIPEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no config.json"):
        AltCLIPEncoder.from_pretrained(tmp_path)


def test_without_transformers_import_error(monkeypatch, tmp_path):
    """Loading without transformers names the extra to install."""
    from qaclip_harness.backends import load_encoder
    from qaclip_harness.backends.altclip import AltCLIPEncoder

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install 'qaclip-core\[altclip\]'"):
        AltCLIPEncoder.from_pretrained(tmp_path)
    with pytest.raises(ImportError, match=r"qaclip-core\[altclip\]"):
        load_encoder(get_card("altclip-vit-l-14"), tmp_path)


def test_import_does_not_need_transformers():
    """The adapter modules import without transformers (it is imported when a model is loaded)."""
    import subprocess

    code = (
        "import sys; sys.modules['transformers'] = None; "
        "import qaclip_harness.backends, qaclip_harness.backends.altclip; "
        "qaclip_harness.backends.backend('altclip')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


def test_fetch_offline_names_the_folder(tmp_path, offline):
    from qaclip_harness.fetch.weights import fetch_weights

    with pytest.raises(DownloadError) as info:
        fetch_weights(get_card("altclip-vit-l-14"), download_root=tmp_path)
    msg = str(info.value)
    assert "BAAI/AltCLIP" in msg and str(tmp_path / "AltCLIP") in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download BAAI/AltCLIP" in msg


def test_fetch_unreachable_endpoint(tmp_path, monkeypatch):
    from qaclip_harness.fetch.weights import fetch_weights

    monkeypatch.setattr("qaclip_core.pretrained.is_offline", lambda: False)
    monkeypatch.setenv("QACLIP_HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    with pytest.raises(DownloadError, match=r"127.0.0.1:9.*To install it by hand"):
        fetch_weights(get_card("altclip-vit-l-14"), download_root=tmp_path)


def test_fetch_offline_reuses_a_complete_folder(tiny_dir, tmp_path, offline):
    from qaclip_harness.fetch.weights import fetch_weights, folder_complete

    card = get_card("altclip-vit-l-14")
    shutil.copytree(tiny_dir, tmp_path / "AltCLIP")
    assert folder_complete("altclip", tmp_path / "AltCLIP")
    assert fetch_weights(card, download_root=tmp_path) == tmp_path / "AltCLIP"
    (tmp_path / "AltCLIP" / "model.safetensors").unlink()
    assert not folder_complete("altclip", tmp_path / "AltCLIP")
    with pytest.raises(DownloadError, match="hf download BAAI/AltCLIP"):
        fetch_weights(card, download_root=tmp_path)


class _FakeHub:
    """Stands in for the Hub's model_info and snapshot_download: a repo with .bin and .safetensors weights."""

    def __init__(self, lfs_sha: str):
        import hashlib

        self.files = {
            "config.json": b"{}",
            "preprocessor_config.json": b"{}",
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
            "sentencepiece.bpe.model": b"spm",
            "README.md": b"# AltCLIP",
            "model.safetensors": b"weights-st",
            "pytorch_model.bin": b"weights-bin",
        }
        self.lfs = {
            "model.safetensors": lfs_sha or hashlib.sha256(b"weights-st").hexdigest(),
            "pytorch_model.bin": hashlib.sha256(b"weights-bin").hexdigest(),
        }
        self.patterns = None

    def model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        from types import SimpleNamespace

        assert repo_id == "BAAI/AltCLIP" and files_metadata
        sibs = [
            SimpleNamespace(rfilename=n, lfs=SimpleNamespace(sha256=self.lfs[n]) if n in self.lfs else None)
            for n in self.files
        ]
        return SimpleNamespace(siblings=sibs)

    def snapshot_download(self, repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        from fnmatch import fnmatch

        self.patterns = list(allow_patterns)
        for name, data in self.files.items():
            if any(fnmatch(name, p) for p in allow_patterns):
                Path(local_dir, name).write_bytes(data)
        return local_dir


@pytest.mark.parametrize("good", [True, False], ids=["verified", "corrupt"])
def test_fetch_downloads_safetensors_only_and_verifies(tmp_path, monkeypatch, good):
    import huggingface_hub

    from qaclip_core.errors import ChecksumError
    from qaclip_harness.fetch.weights import fetch_weights

    monkeypatch.setattr("qaclip_core.pretrained.is_offline", lambda: False)  # even where the runner sets HF_HUB_OFFLINE
    monkeypatch.setattr(
        "qaclip_core.pretrained.unreachable", lambda endpoint: None
    )  # the fake hub stands in for the network
    hub = _FakeHub(lfs_sha=None if good else "0" * 64)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", hub.model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    card = get_card("altclip-vit-l-14")
    folder = tmp_path / "AltCLIP"
    if good:
        assert fetch_weights(card, download_root=tmp_path) == folder
        assert (folder / "model.safetensors").read_bytes() == b"weights-st"
    else:
        with pytest.raises(ChecksumError, match=r"model.safetensors.*removed"):
            fetch_weights(card, download_root=tmp_path)
        assert not (folder / "model.safetensors").exists()
    # one set of weights (safetensors preferred), no README and such
    assert not (folder / "pytorch_model.bin").exists() and not (folder / "README.md").exists()
    assert "model.safetensors" in hub.patterns and "pytorch_model.bin" not in hub.patterns
