"""Fuzz: the evaluation data the suite and the CLI read (tests/fuzz/support.py holds the property).

``*_texts.jsonl`` captions, image LMDB records (keys, the count, base64 values, the image bytes inside),
label files, and zip archives (a dataset's zip and ELEVATER's zip inside a zip: member names, duplicates,
a file where a folder must be, damaged bytes). A zip must never write outside its target folder, and a
refused one leaves no staging folder behind.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from qaclip_core.errors import QAClipError
from tests.fuzz.support import fuzz, holds, mutated, raw_bytes, texts

IDS = st.integers(0, 50)


@contextmanager
def folder():
    with tempfile.TemporaryDirectory(prefix="qaclip-fuzz-") as d:
        yield Path(d)


# ------------------------------------------------------------------------------------------------
# *_texts.jsonl


@st.composite
def caption_records(draw):
    return [
        {"text_id": i, "text": draw(st.text(max_size=20)), "image_ids": draw(st.lists(IDS, min_size=1, max_size=3))}
        for i in draw(st.lists(IDS, min_size=1, max_size=6, unique=True))
    ]


@st.composite
def jsonl_bytes(draw):
    rows, _ = draw(mutated(caption_records()))
    lines = []
    for row in rows if isinstance(rows, list) else [rows]:
        try:
            lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
        except (ValueError, RecursionError):
            lines.append(repr(row))
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "   ", "{", "[1]", "null", "\x00"])))
    return draw(raw_bytes(draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines) + "\n"))


@fuzz(100)
@given(jsonl_bytes())
def test_texts_jsonl(data):
    from qaclip_harness.data.retrieval import image_to_texts, read_texts

    with folder() as d:
        path = d / "test_texts.jsonl"
        path.write_bytes(data)

        def use(records):
            image_to_texts(records)
            for r in records:
                assert isinstance(r.text_id, int) and isinstance(r.text.encode("utf-8"), bytes)
                assert r.image_ids and all(isinstance(i, int) for i in r.image_ids)

        holds("*_texts.jsonl", lambda: read_texts(path), QAClipError, [str(path)], d, use)


# ------------------------------------------------------------------------------------------------
# LMDB records


def _png(width: int = 2, height: int = 2) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_header() -> bytes:
    """A PNG that declares 100,000 x 100,000 pixels (PIL refuses such a decompression bomb) and holds none."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


PNG = _png()
IMAGE_BYTES = st.one_of(
    st.just(PNG),
    st.builds(_png, st.integers(1, 40), st.integers(1, 40)),
    st.just(_bomb_header()),
    st.binary(max_size=64),
    st.integers(0, len(PNG) - 1).map(lambda n: PNG[:n]),  # cut short
    st.just(b"\xff\xd8\xff\xe0" + b"\x00" * 30),  # a JPEG header and nothing
)


@st.composite
def lmdb_values(draw):
    image = draw(IMAGE_BYTES)
    how = draw(st.sampled_from(["urlsafe", "urlsafe", "standard", "no padding", "newlines", "not base64", "text"]))
    if how == "urlsafe":
        return base64.urlsafe_b64encode(image)
    if how == "standard":
        return base64.b64encode(image)
    if how == "no padding":
        return base64.urlsafe_b64encode(image).rstrip(b"=")
    if how == "newlines":
        return base64.encodebytes(image)
    if how == "not base64":
        return draw(st.binary(min_size=1, max_size=40))
    return draw(texts()).encode("utf-8", "surrogatepass")[:4000] or b"x"


LMDB_KEYS = st.one_of(
    IDS.map(lambda i: str(i).encode()),
    st.sampled_from([b"007", b"-1", b"+3", b"1_000", b" 4", b"\xd9\xa3", b"\xef\xbc\x91", b"x", b"num_images"]),
    st.binary(min_size=1, max_size=12),
)


@st.composite
def lmdb_records(draw):
    if draw(st.booleans()):  # a valid LMDB, perhaps with one record damaged
        images = {
            str(i).encode(): base64.urlsafe_b64encode(_png()) for i in draw(st.lists(IDS, max_size=4, unique=True))
        }
        if images and draw(st.booleans()):
            images[draw(st.sampled_from(sorted(images)))] = draw(lmdb_values())
        return {**images, b"num_images": str(len(images)).encode()}
    records = {k: draw(lmdb_values()) for k in draw(st.lists(LMDB_KEYS, min_size=0, max_size=5, unique=True))}
    count = draw(st.one_of(st.just(None), st.sampled_from([b"auto", b"0", b"-1", b"1e3", b"\xff", b"", b" 2 "])))
    if count == b"auto":
        count = str(sum(1 for k in records if k != b"num_images")).encode()
    if count is not None:
        records[b"num_images"] = count or b" "  # LMDB keeps no empty value here: a blank count instead
    return records


@fuzz(60)
@given(lmdb_records())
def test_lmdb_records(records):
    import lmdb

    from qaclip_harness.data.retrieval import LmdbImages

    with folder() as d:
        path = d / "lmdb" / "test" / "imgs"
        path.mkdir(parents=True)
        env = lmdb.open(str(path), map_size=1 << 26)
        with env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key, value)
        env.close()

        def read():
            images = LmdbImages(path)
            try:
                for i in range(len(images)):
                    image = images.load_image(i)
                    assert image.size[0] > 0 and image.size[1] > 0
                return len(images)
            finally:
                del images

        holds("LMDB records", read, QAClipError, [str(path)], d)


# ------------------------------------------------------------------------------------------------
# label files


@st.composite
def label_bytes(draw):
    labels = draw(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["飞机", "汽车", "鸟"])), max_size=12))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x85"]))
    return draw(raw_bytes(sep.join(labels) + draw(st.sampled_from(["", "\n"]))))


@fuzz(100)
@given(label_bytes())
def test_label_files(data):
    from qaclip_harness.data.elevater import class_ids
    from qaclip_harness.data.imagenet import read_labels

    with folder() as d:
        path = d / "label_cn.txt"
        path.write_bytes(data)

        def use(labels):
            assert labels and all(isinstance(x, str) and "\n" not in x and "\r" not in x for x in labels)
            class_ids(len(labels))

        holds("label files", lambda: read_labels(path, expected_sha256=None), QAClipError, [str(path)], d, use)


# ------------------------------------------------------------------------------------------------
# zip members

MEMBER_NAMES = st.one_of(
    st.sampled_from(
        [
            "kitti-distance/test/0/a.png",
            "kitti-distance/test/1/b.png",
            "kitti-distance/label_cn.txt",
            "test/0/a.png",
            "label_cn.txt",
            "./../evil.txt",
            "../../evil.txt",
            "/etc/evil.txt",
            "kitti-distance/../../evil.txt",
            "a\\..\\..\\evil.txt",
            "./test/0/./a.png",
            "test//0//a.png",
            "test/0/",
            "test",
            "test/0/a.png/inside",
            "__MACOSX/test/0/._a.png",
            "./../evil.txt",
            "x" * 300 + "/a.png",
            "中文/test/0/图.png",
            " /test",
            "...",
        ]
    ),
    st.text(min_size=1, max_size=20).filter(lambda n: "\x00" not in n),
)


@st.composite
def zip_archives(draw):
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": meant
        for name in draw(st.lists(MEMBER_NAMES, min_size=1, max_size=6)):
            try:
                zf.writestr(name, draw(st.binary(max_size=20)) if not name.endswith("/") else b"")
            except (ValueError, UnicodeError):
                pass  # zipfile refuses to write some names: nothing to read then
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "flip"]))
    if damage == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    return data


def _unpacked(before: dict, after: dict) -> bool:
    """What an accepted archive may change: its folder appears whole, the archive and everything else as they were."""
    new = set(after) - set(before)
    return (
        all(k.startswith("datasets/kitti-distance") for k in new)
        and all(after.get(k) == v for k, v in before.items())
        and "datasets/kitti-distance" in after
    )


def _inside_only(d: Path):
    def use(_):
        staging = [p.name for p in (d / "datasets").iterdir() if ".extract-" in p.name]
        assert not staging, staging
        target = d / "datasets" / "kitti-distance"
        outside = [p for p in d.rglob("*evil*") if target not in p.parents]
        assert not outside, f"a member landed outside the target: {outside}"

    return use


@fuzz(80)
@given(zip_archives())
def test_zip_members(data):
    """A dataset's zip unpacked by --download (fetch/datasets.py): all of it inside the target, or one error."""
    from qaclip_harness.data.catalog import get_dataset
    from qaclip_harness.fetch.datasets import _extract_zip

    with folder() as d:
        (d / "datasets").mkdir()
        archive = d / "archive.zip"
        archive.write_bytes(data)
        card = get_dataset("kitti-distance")
        holds(
            "zip members",
            lambda: _extract_zip(archive, card, d / "datasets"),
            QAClipError,
            [str(archive)],
            d,
            _inside_only(d),
            changes=_unpacked,
        )
        _inside_only(d)(None)


@fuzz(50)
@given(zip_archives(), st.booleans())
def test_zip_inside_a_zip(inner, stored):
    """ELEVATER's inner zip read out of the outer one and unpacked (fetch/archives.py)."""
    from qaclip_harness.fetch.archives import extract_member

    with folder() as d:
        (d / "datasets").mkdir()
        outer = d / "ELEVATER_all.zip"
        with zipfile.ZipFile(outer, "w", compression=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ELEVATER_all/kitti-distance.zip", inner)
        holds(
            "zip members (inside a zip)",
            lambda: extract_member(outer, "kitti-distance.zip", d / "datasets", "kitti-distance"),
            QAClipError,
            [str(outer)],
            d,
            _inside_only(d),
            changes=_unpacked,
        )
        _inside_only(d)(None)
