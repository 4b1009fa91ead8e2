"""The embedded fixture: generated Shapes-CN data, the trained fixture-tiny checkpoint, its card.

The fixture lets the suite run its real path (fetch, check, load, evaluate, compare) without
real checkpoints or datasets; these tests show that it is deterministic, in the real formats,
and meaningful (a model that works, and that breaks visibly when inputs are fed wrongly).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from qaclip_core import get_card, infer_arch, load_checkpoint, read_state_dict, tokenize
from qaclip_core.registry import available_models
from qaclip_core.tokenizer import preprocess_text
from qaclip_core.transforms import MEAN, STD, image_transform
from qaclip_harness.fixture import ARCH, CHECKPOINT, MODELS, shapes
from qaclip_harness.fixture.train import storage_dtype
from tests.conftest import require_reference

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "expected"
MAX_BYTES = 5 * 1024 * 1024
UNK_ID = 100
# t2i R@1 of the shipped checkpoints (fp32) on the test split: fixture-tiny 34.5, fixture-tiny-rn 93.8.
# The ViT learns the varied storage modes and sizes more slowly than the ResNet in the same 2,000
# steps; the exact gates need features, not accuracy (a weaker model has more near decisions).
R1_FLOOR = {"fixture-tiny": 30.0, "fixture-tiny-rn": 85.0}
BREAK_MARGIN = 10.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def test_split() -> shapes.ShapesSplit:
    return shapes.generate_split("test")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_checkpoint(CHECKPOINT, ARCH)


# ------------------------------------------------------------------ data


def test_generator_is_deterministic(test_split):
    again = shapes.generate_split("test")
    assert [i.image_id for i in again.images] == [i.image_id for i in test_split.images]
    assert [i.data for i in again.images] == [i.data for i in test_split.images]
    assert again.texts == test_split.texts
    a, b = shapes.generate_classification(per_class=3), shapes.generate_classification(per_class=3)
    assert a == b
    # another seed gives other data
    assert shapes.generate_split("test", seed=1).texts != test_split.texts


def test_generator_pins_the_data_the_expected_numbers_were_computed_on(test_split):
    doc = yaml.safe_load((EXPECTED / "fixture-shapes.yaml").read_text(encoding="utf-8"))
    assert shapes.split_digest(test_split) == doc["data"]["test_digest"], (
        "the generated test split changed; rerun tools/fixture_expected.py"
    )
    doc = yaml.safe_load((EXPECTED / "fixture-shapes-cls.yaml").read_text(encoding="utf-8"))
    assert shapes.classification_digest(shapes.generate_classification()) == doc["data"]["digest"], (
        "the generated zero-shot set changed; rerun tools/fixture_expected.py"
    )


def test_captions_and_ground_truth_look_like_the_real_sets(test_split):
    ids = [img.image_id for img in test_split.images]
    assert len(set(ids)) == len(ids)
    assert 100 <= len(ids) <= 200 and 300 <= len(test_split.texts) <= 450
    assert [t for t, _, _ in test_split.texts] == list(range(1, len(test_split.texts) + 1))
    texts = [t for _, t, _ in test_split.texts]
    described = set()
    for _, text, image_ids in test_split.texts:
        assert text and image_ids == sorted(set(image_ids)) and set(image_ids) <= set(ids)
        described.update(image_ids)
    assert described == set(ids), "every image needs a caption"
    # duplicate caption records (same text, own text id), texts with several ground-truth images,
    # images with several captions, repeated renderings of one combination
    assert len(texts) - len(set(texts)) == shapes.TEST_DUPLICATES
    assert sum(len(gt) > 1 for _, _, gt in test_split.texts) >= 20
    per_image = {}
    for _, _, gt in test_split.texts:
        for i in gt:
            per_image[i] = per_image.get(i, 0) + 1
    assert min(per_image.values()) >= 3
    assert len({img.combo for img in test_split.images}) == len(ids) - shapes.TEST_REPEATS
    # Latin colour words in several cases and with accents, ASCII and full-width digits
    joined = "".join(texts)
    assert any(w in joined for w in ("RED", "BLUE", "GREEN", "BLACK", "PURPLE", "YELLOW"))
    assert any(w in joined for w in ("Red", "Blue", "Green", "Black", "Purple", "Yellow"))
    assert any(ch in joined for ch in "èÉüÜöÖàÀïÏ")
    assert any(ch in joined for ch in "23") and any(ch in joined for ch in "２３")
    tokens = tokenize([preprocess_text(t) for t in texts])
    assert not (tokens == UNK_ID).any(), "a caption has a character outside the vocabulary"
    truncated = [t for t, row in zip(texts, tokens) if bool((row != 0).all())]
    assert len(set(truncated)) == shapes.TEST_LONG, "the long captions (and only they) reach the context length"


def test_distractors_no_caption_describes_in_every_split_mode_and_size(test_split):
    """Images without a caption, as MUGE has thousands: in each split, in every storage mode and canvas size."""
    described = {i for _, _, gt in test_split.texts for i in gt}
    for split, distractors in (("test", test_split.distractors), ("train", shapes._distractors("train", 0, set()))):
        assert len(distractors) == shapes.DISTRACTORS[split]
        pairs = {(d.encoding, d.size) for d in distractors}
        assert (
            {e for e, _ in pairs}
            == set(shapes.DISTRACTOR_ENCODINGS)
            == {e for e, _, _ in shapes.COLOUR_ENCODINGS + shapes.MONO_ENCODINGS}
        )
        assert {s for _, s in pairs} == set(shapes.CANVAS_SIZES)
        if split == "train":
            assert len(pairs) == len(shapes.DISTRACTOR_ENCODINGS) * len(shapes.CANVAS_SIZES)  # every pair
        for d in distractors:
            im = Image.open(io.BytesIO(d.data))
            assert im.size == d.size and len({s for s, _ in d.parts}) == 2  # two different shapes: no caption's scene
    ids = [d.image_id for d in test_split.distractors]
    assert len(set(ids)) == len(ids) and not set(ids) & {i.image_id for i in test_split.images}
    assert not set(ids) & described, "a distractor is some caption's ground truth"
    modes = {Image.open(io.BytesIO(d.data)).mode for d in test_split.distractors}
    assert {"RGB", "RGBA", "P", "CMYK", "L", "LA", "1", "I;16"} <= modes


def test_distractors_leave_the_captioned_split_as_it_was(test_split, monkeypatch):
    """Drawn from a stream of their own after the rest: the captioned images and texts (what the fixture models were
    trained and measured on) are those of the split without them."""
    monkeypatch.setattr(shapes, "DISTRACTORS", {"train": 0, "test": 0})
    plain = shapes.generate_split("test")
    assert not plain.distractors and plain.texts == test_split.texts
    assert [(i.image_id, i.data) for i in plain.images] == [(i.image_id, i.data) for i in test_split.images]


@pytest.mark.parametrize("kind", sorted(shapes.LONG_KINDS))
def test_long_captions_put_the_telling_character_where_the_cut_matters(kind):
    combo = shapes.Combo(1, 0, 1, 0, 0)  # a cross: 十字形
    caption = shapes.long_caption(combo, kind)
    ids = tokenize([preprocess_text(caption)], context_length=80)[0].tolist()
    at = shapes.LONG_KINDS[kind]
    assert ids[at] == tokenize(["十"])[0, 1].item(), "the shape's first character is not at its place"
    kept = tokenize([preprocess_text(caption)])[0]
    assert (ids[at] in kept.tolist()) == (at <= shapes.CONTEXT - 2)


def test_images_come_in_every_mode_size_and_format(test_split):
    modes, formats, sizes = set(), set(), set()
    for img in test_split.images:
        im = Image.open(io.BytesIO(img.data))
        assert im.size == img.size
        modes.add(im.mode)
        formats.add(im.format)
        sizes.add(img.size)
    assert {"RGB", "RGBA", "P", "CMYK", "L", "LA", "1", "I;16"} <= modes
    assert formats == {"PNG", "JPEG"}
    assert {(320, 80), (80, 320), (384, 96), (96, 384), (48, 48)} <= sizes
    cls = [
        Image.open(io.BytesIO(d)) for files in shapes.generate_classification(per_class=20).values() for _, d in files
    ]
    assert len({im.mode for im in cls}) >= 6 and {im.format for im in cls} == {"PNG", "JPEG"}


def test_a_scene_survives_squashing_but_not_a_centre_crop():
    """The logical scene comes back from any canvas by squashing; a centre crop of a wide one loses a corner shape."""
    import random

    combo = shapes.Combo(0, 0, 1, 0, 1)  # a small red circle in the top-left corner
    square = np.asarray(
        Image.open(io.BytesIO(shapes.render(combo, random.Random(3), (96, 96)))).convert("RGB"), dtype=float
    )
    wide = Image.open(io.BytesIO(shapes.render(combo, random.Random(3), (384, 96))))
    squashed = np.asarray(wide.resize((96, 96), Image.BICUBIC).convert("RGB"), dtype=float)
    assert np.abs(squashed - square).mean() < 4
    cropped = np.asarray(wide.crop((144, 0, 240, 96)).convert("RGB"), dtype=float)
    red = (cropped[..., 0] > 150) & (cropped[..., 1] < 100)
    assert not red.any(), "a centre crop keeps the corner shape"


def test_write_shapes_dataset_layout(tmp_path):
    info = shapes.write_shapes_dataset(tmp_path)
    folder = tmp_path / shapes.RETRIEVAL_DIRNAME
    assert set(info["splits"]) == {"test"}  # the training split is written only when asked for
    for split in ("test",):
        env = lmdb.open(str(folder / "lmdb" / split / "imgs"), readonly=True, lock=False)
        with env.begin() as txn:
            n = int(txn.get(b"num_images").decode())
            keys = [k for k, _ in txn.cursor() if k != b"num_images"]
            first = txn.get(keys[0])
        env.close()
        assert n == len(keys) == info["splits"][split]["images"]
        assert info["splits"][split]["distractors"] == shapes.DISTRACTORS[split] > 0  # in the LMDB, in no caption
        assert all(k.decode().isdigit() for k in keys)
        import base64

        assert Image.open(io.BytesIO(base64.urlsafe_b64decode(first))).format in ("PNG", "JPEG")
        lines = (folder / f"{split}_texts.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == info["splits"][split]["texts"]
        assert set(json.loads(lines[0])) == {"text_id", "text", "image_ids"}
    cls = tmp_path / shapes.ZEROSHOT_DIRNAME
    folders = sorted(p.name for p in (cls / "test").iterdir())
    labels = (cls / "label_cn.txt").read_text(encoding="utf-8").splitlines()
    assert folders == [f for f, _ in shapes.SHAPES]
    assert labels == [dict(shapes.SHAPES)[f] for f in folders] == info["classes"]
    assert all(len(list((cls / "test" / f).glob("*.*"))) == shapes.ZEROSHOT_PER_CLASS for f in folders)


# ------------------------------------------------------------------ checkpoint and card


FIXTURES = sorted(MODELS)


@pytest.mark.parametrize("name", FIXTURES)
def test_checkpoint_has_the_reference_format(name):
    _arch, checkpoint = MODELS[name]
    assert checkpoint.stat().st_size <= MAX_BYTES
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"epoch", "step", "name", "state_dict"}
    assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["step"], int) and ckpt["name"] == name
    sd = ckpt["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    for key, value in sd.items():
        assert value.dtype == storage_dtype(key[len("module.") :], value.dtype), key
    floats = [v for v in sd.values() if v.is_floating_point()]
    assert sum(v.numel() for v in floats if v.dtype == torch.float16) > 0.95 * sum(v.numel() for v in floats)


@pytest.mark.parametrize("name", FIXTURES)
def test_checkpoint_dtype_layout_is_the_reference_fp16_layout(name):
    require_reference()
    from cn_clip.clip.model import CLIP, convert_weights

    from qaclip_core.model.config import reference_kwargs

    arch, checkpoint = MODELS[name]
    ref = CLIP(**reference_kwargs(arch))
    convert_weights(ref)
    sd = read_state_dict(checkpoint)
    assert {k: v.dtype for k, v in sd.items()} == {k: v.dtype for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("name", FIXTURES)
def test_card_matches_the_checkpoint(name):
    arch, checkpoint = MODELS[name]
    card = get_card(name)
    assert card.test_only and card.family == "fixture"
    assert card.arch == arch and card.resolution == 64
    assert card.hub_filename == checkpoint.name
    assert card.sha256 == _sha256(checkpoint)
    assert name not in available_models()


def test_expected_numbers_name_these_checkpoints():
    for doc_name in ("fixture-shapes.yaml", "fixture-shapes-cls.yaml"):
        doc = yaml.safe_load((EXPECTED / doc_name).read_text(encoding="utf-8"))
        for name, (_, checkpoint) in MODELS.items():
            assert doc["checkpoints"][name]["sha256"] == _sha256(checkpoint), (
                f"{doc_name} was computed from another {name}"
            )
            assert name in doc["models"]


def test_loads_strictly_and_is_recognised(model):
    sd = read_state_dict(CHECKPOINT)
    assert infer_arch(sd) == ARCH
    assert all(p.dtype == torch.float32 for p in model.parameters())
    inferred = load_checkpoint(CHECKPOINT)  # architecture inferred from the shapes
    assert inferred.arch.name == ARCH


# ------------------------------------------------------------------ meaningful


def _features(model, split, image_fn=None, token_fn=None):
    transform = image_transform(model.image_size)
    images = torch.stack([transform(Image.open(io.BytesIO(i.data))) for i in split.images])
    tokens = tokenize([preprocess_text(t) for _, t, _ in split.texts])
    if image_fn is not None:
        images = image_fn(images)
    if token_fn is not None:
        tokens = token_fn(tokens)
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
    return img, txt


def _t2i_r1(model, split, **kw) -> float:
    img, txt = _features(model, split, **kw)
    best = (txt @ img.t()).argmax(dim=1).tolist()
    ids = [i.image_id for i in split.images]
    return 100.0 * sum(ids[b] in gt for b, (_, _, gt) in zip(best, split.texts)) / len(split.texts)


def _shift_ids(tokens):
    return torch.where(tokens != 0, tokens + 1, tokens)


def _bgr(images):
    return images[:, [2, 1, 0]]


def _unnormalised(images):
    # undo the normalisation: pixels in [0, 1], as ToTensor alone gives them
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return images * std + mean


_MODELS: dict = {}


def _loaded(name: str):
    if name not in _MODELS:
        arch, checkpoint = MODELS[name]
        _MODELS[name] = load_checkpoint(checkpoint, arch)
    return _MODELS[name]


@pytest.fixture(scope="module")
def r1(test_split) -> dict:
    return {name: _t2i_r1(_loaded(name), test_split) for name in FIXTURES}


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_retrieves(r1, name):
    # chance is about 1.5% (several ground truths for some captions among 120 images)
    assert r1[name] >= R1_FLOOR[name], f"{name}: t2i R@1 {r1[name]:.1f} < {R1_FLOOR[name]}"


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize(
    "what, kw",
    [
        ("token ids shifted by one", {"token_fn": _shift_ids}),
        ("channels in BGR order", {"image_fn": _bgr}),
        ("normalisation left out", {"image_fn": _unnormalised}),
    ],
)
def test_wrong_inputs_break_it(test_split, r1, name, what, kw):
    # Measured on the shipped checkpoints: shifted ids 1.6 / 0.8, BGR 8.0 / 34.7, unnormalised 4.1 / 4.4
    # (fixture-tiny / fixture-tiny-rn) against 34.5 / 93.8. Subtler slips move R@1 by a few queries;
    # the exact gates of the suite and the stored reference features catch those.
    broken = _t2i_r1(_loaded(name), test_split, **kw)
    assert broken < r1[name] - BREAK_MARGIN, f"{name}, {what}: t2i R@1 {broken:.1f} is not clearly below {r1[name]:.1f}"
