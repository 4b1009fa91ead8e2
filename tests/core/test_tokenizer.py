"""Link 2: token ids equal to cn_clip's tokenizer on a large, varied corpus."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qaclip_core import tokenize
from qaclip_core.tokenizer import VOCAB_PATH, VOCAB_SHA256, Tokenizer, preprocess_text, sha256_hex
from tests.conftest import CAPTIONS, require_reference
from tests.data import LABEL_CN, LABEL_EN

require_reference(allow_module_level=True)
from cn_clip.clip import tokenize as ref_tokenize  # noqa: E402 -- after require_reference, which names the oracle when it is missing

TEMPLATES = [
    "{}的照片",
    "质量差的{}的照片",
    "许多{}的照片",
    "{}的雕塑",
    "一张{}的酷炫图片。",
    "这是{}。",
    "{}的低分辨率照片",
    "涂鸦{}",
    "很难看到{}的照片",
    "{}的刺绣照片",
    "一种叫{}的花的照片",
    "{}的卫星照片",
    "{}的明亮照片",
    "{}的纹身",
    "一张{}的好看的图片。",
    "{}的裁剪照片",
    "{}的渲染",
    "“{}”的照片",
    "A photo of {}.",
    "{}的好看图片。",
]

# code-point pools for generated strings: CJK, Latin + accents, digits, full-width forms,
# emoji, combining marks, control and zero-width characters, odd whitespace
POOLS = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
    (0x20, 0x7E),
    (0xC0, 0x17F),
    (0x30, 0x39),
    (0xFF01, 0xFF5E),
    (0x1F300, 0x1FAFF),
    (0x300, 0x36F),
    (0x0, 0x1F),
    (0x7F, 0x9F),
    (0x200B, 0x200F),
    (0x2028, 0x202F),
    (0x3000, 0x303F),
    (0xAC00, 0xD7A3),
    (0x3040, 0x30FF),
    (0x0600, 0x06FF),
    (0xFFF0, 0xFFFF),
]


def _generated(n: int, seed: int = 1234) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice([0, 1, 2, 5, 10, 20, 60, 120])
        out.append("".join(chr(rng.randint(*rng.choice(POOLS))) for _ in range(length)))
    return out


def _corpus() -> list:
    labels = [line.strip() for line in open(LABEL_CN, encoding="utf-8")]
    prompts = [t.format(c) for c in labels for t in TEMPLATES]  # 20,000 real prompts
    english = [line.strip() for line in open(LABEL_EN, encoding="utf-8")]
    prompts += [t.format(c) for c in english for t in TEMPLATES[:3]]  # Latin script, mixed case, punctuation
    prompts += [preprocess_text(p) for p in prompts[:2000]]
    special = [
        "",
        " ",
        "\t\n",
        "x" * 250,
        "好" * 80,
        "word" * 60,
        "İstanbul ǅ ß ﬁ",
        "\u2028a\u2029b\x85c",
        "\ufeff零宽\u200d连接",
        "😀👍🏽👨‍👩‍👧",
        "①②③ Ⅻ ½ ²",
        "ｈｅｌｌｏ　ｗｏｒｌｄ",
        "\x00\ufffd\x07",
    ]
    return CAPTIONS + special + prompts + _generated(6000)


def test_vocab_is_pinned():
    assert sha256_hex(VOCAB_PATH.read_bytes()) == VOCAB_SHA256


def test_ids_equal_reference_on_corpus():
    corpus = _corpus()
    assert len(corpus) >= 20000
    ours, ref = tokenize(corpus), ref_tokenize(corpus)
    bad = (ours != ref).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"{len(bad)} strings differ, first: {[corpus[i] for i in bad[:5]]!r}"


def test_context_lengths_and_shapes():
    text = "一" * 100
    for n in (2, 3, 24, 52, 77):
        assert torch.equal(tokenize([text, ""], context_length=n), ref_tokenize([text, ""], context_length=n))
    assert tokenize("单个字符串").shape == (1, 52)
    assert tokenize("单个").dtype == torch.long


def test_tokenizer_rejects_wrong_vocab(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sha256") as info:
        Tokenizer(bad)
    assert str(bad) in str(info.value)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=8))
def test_ids_equal_reference_hypothesis(texts):
    assert torch.equal(tokenize(texts), ref_tokenize(texts))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_ids_equal_reference_any_unicode(text):
    assert torch.equal(tokenize(text), ref_tokenize(text))
