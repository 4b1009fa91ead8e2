"""BERT WordPiece tokenizer over the Chinese vocabulary, with the reference's CLIP wrapping.

``assets/vocab.txt`` is the 21,128-entry Chinese BERT vocabulary as shipped in the ``cn_clip``
1.6.0 wheel (Chinese-CLIP, MIT licence; originally Google's Chinese BERT, Apache-2.0). It is
pinned by :data:`VOCAB_SHA256` and checked when first loaded.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

VOCAB_PATH = Path(__file__).parent / "assets" / "vocab.txt"
VOCAB_SHA256 = "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c"
CONTEXT_LENGTH = 52
MAX_CHARS_PER_WORD = 200

# Code-point ranges BERT treats as CJK ideographs: each becomes a word of its own.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


@lru_cache(maxsize=65536)
def _char_class(ch: str) -> str:
    """'drop', 'space', 'cjk', 'punct' or 'plain' for one character."""
    if ch in " \t\n\r":
        return "space"
    cat = unicodedata.category(ch)
    if ch == "\x00" or ch == "\ufffd" or cat in ("Cc", "Cf"):
        return "drop"
    if cat == "Zs":
        return "space"
    cp = ord(ch)
    if _is_cjk(cp):
        return "cjk"
    # All non-alphanumeric ASCII counts as punctuation, as in BERT.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or cat.startswith("P"):
        return "punct"
    return "plain"


def preprocess_text(text: str) -> str:
    """The text normalisation the evaluation scripts apply before tokenising (lower case, curly quotes)."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def _strip_accents(word: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if unicodedata.category(ch) != "Mn")


def _split_punct(word: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for ch in word:
        if _char_class(ch) == "punct":
            if current:
                pieces.append(current)
                current = ""
            pieces.append(ch)
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def basic_tokenize(text: str) -> list[str]:
    """Clean, split CJK characters and punctuation, lower-case and strip accents."""
    spaced = []
    for ch in text:
        kind = _char_class(ch)
        if kind == "drop":
            continue
        if kind == "space":
            spaced.append(" ")
        elif kind == "cjk":
            spaced.append(f" {ch} ")
        else:
            spaced.append(ch)
    words: list[str] = []
    # str.split() (not split(" ")): BERT splits on every Unicode whitespace here, \u2028 included.
    for word in "".join(spaced).split():
        words.extend(_split_punct(_strip_accents(word.lower())))
    return " ".join(words).split()


class Tokenizer:
    """WordPiece over a vocabulary file; ids equal to the reference tokenizer's."""

    def __init__(self, vocab_path: str | Path = VOCAB_PATH, sha256: str = VOCAB_SHA256):
        data = Path(vocab_path).read_bytes()
        digest = sha256_hex(data)
        if sha256 and digest != sha256:
            raise ValueError(f"vocabulary {vocab_path}: sha256 {digest} does not match the pinned {sha256}")
        self.vocab: dict[str, int] = {}
        # One entry per line; stripped like the reference, so a later duplicate wins.
        for index, line in enumerate(_lines(data)):
            self.vocab[line.strip()] = index
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self._word_ids = lru_cache(maxsize=262144)(self._wordpiece_ids)

    def _wordpiece_ids(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_CHARS_PER_WORD:
            return (self.unk_id,)
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return (self.unk_id,)
            start = end
        return tuple(ids)

    def encode(self, text: str | bytes) -> list[int]:
        """WordPiece ids of ``text``, without [CLS]/[SEP]."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "ignore")
        ids: list[int] = []
        for word in basic_tokenize(text):
            ids.extend(self._word_ids(word))
        return ids

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text``."""
        return [self.inv_vocab[i] for i in self.encode(text)]

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """[N, context_length] ids: [CLS] + ids[:context_length - 2] + [SEP], zero padded."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        else:
            try:
                texts = list(texts)
            except TypeError:
                raise TypeError(
                    f"tokenize: expected a string or a list of strings, got {type(texts).__name__} {texts!r:.80}"
                ) from None
        for i, text in enumerate(texts):
            if not isinstance(text, (str, bytes)):
                raise TypeError(f"tokenize: texts[{i}] is {type(text).__name__} {text!r:.80}, expected a string")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (for [CLS] and [SEP]), got {context_length}")
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.cls_id, *self.encode(text)[: context_length - 2], self.sep_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _lines(data: bytes) -> list[str]:
    # The reference reads the file with readline(), which splits on \n (and \r) only, not on
    # \u2028 that the vocabulary contains.
    text = data.decode("utf-8")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The tokenizer over the bundled vocabulary (loaded once)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Token ids [N, context_length] for a string or a list of strings, as ``cn_clip.tokenize`` gives."""
    return default_tokenizer()(texts, context_length)
