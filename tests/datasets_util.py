"""Builders of tiny evaluation datasets (retrieval LMDBs, ImageNet folders) and reference helpers for tests."""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import random
import runpy
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image, ImageDraw

from tests.conftest import require_reference

# ids on both sides of 9 / 99 / 999 so that byte order differs from numeric order
IMAGE_IDS = [
    3,
    7,
    9,
    10,
    11,
    25,
    99,
    100,
    101,
    250,
    999,
    1000,
    1001,
    4096,
    12345,
    20000,
    31,
    5,
    800,
    77,
    123456,
    42,
    8,
    1010,
    60,
]


def make_image(seed: int, size: tuple[int, int] = (32, 32), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Encoded bytes of a small deterministic drawing."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    w, h = size
    for _ in range(4):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = rng.randrange(x0, w + 1), rng.randrange(y0, h + 1)
        d.rectangle((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sample_images(ids: Sequence[int] = IMAGE_IDS) -> dict[int, bytes]:
    """Mixed JPEG / PNG (RGB, RGBA, L, P) images of a few sizes, keyed by image id."""
    kinds = [
        ("JPEG", "RGB", (32, 32)),
        ("PNG", "RGB", (32, 32)),
        ("PNG", "RGBA", (40, 24)),
        ("JPEG", "L", (17, 33)),
        ("PNG", "P", (32, 32)),
    ]
    return {
        i: make_image(i, kinds[n % len(kinds)][2], kinds[n % len(kinds)][0], kinds[n % len(kinds)][1])
        for n, i in enumerate(ids)
    }


def sample_texts(ids: Sequence[int] = IMAGE_IDS, n_texts: int = 30, seed: int = 0) -> list[dict]:
    """Caption records, some naming several images; every image gets at least one caption."""
    rng = random.Random(seed)
    words = ["猫", "狗", "红色的", "汽车", "Nike 跑鞋", "“你好”", "ABC", "海边", "雪地里的人"]
    out = []
    for t in range(n_texts):
        gt = [ids[t % len(ids)]]
        if t % 4 == 0:
            gt += rng.sample([i for i in ids if i not in gt], 2)
        out.append({"text_id": 1000 + 7 * t, "text": "".join(rng.sample(words, 3)), "image_ids": gt})
    return out


def _quiet_run_module(module: str, argv: list[str]) -> None:
    old = sys.argv
    sys.argv = [module, *argv]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = old


def build_with_reference(data_dir: Path, split: str, images: Mapping[int, bytes], texts: Iterable[dict]) -> Path:
    """Write ``<split>_imgs.tsv`` + ``<split>_texts.jsonl`` and run cn_clip's build_lmdb_dataset on them."""
    require_reference()
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{split}_imgs.tsv", "w", encoding="utf-8") as f:
        for image_id, data in images.items():
            f.write(f"{image_id}\t{base64.urlsafe_b64encode(data).decode('ascii')}\n")
    with open(data_dir / f"{split}_texts.jsonl", "w", encoding="utf-8") as f:
        for rec in texts:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    _quiet_run_module("cn_clip.preprocess.build_lmdb_dataset", ["--data_dir", str(data_dir), "--splits", split])
    return data_dir / "lmdb" / split / "imgs"


def reference_tr_annotation(texts_jsonl: Path) -> list[dict]:
    """cn_clip's transform_ir_annotation_to_tr output for ``texts_jsonl`` (image_id -> text_ids lines)."""
    require_reference()
    _quiet_run_module("cn_clip.eval.transform_ir_annotation_to_tr", ["--input", str(texts_jsonl)])
    out = Path(str(texts_jsonl).replace(".jsonl", "") + ".tr.jsonl")
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def write_raw_lmdb(path: Path, items: Mapping[bytes, bytes]) -> Path:
    """An LMDB holding exactly ``items`` (for malformed-data tests)."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    return path


def lmdb_items(path: Path) -> dict[bytes, bytes]:
    """Every key/value of an LMDB."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def write_features(path: Path, key: str, ids: Sequence[int], feats: np.ndarray) -> Path:
    """Features in the reference's jsonl format (``{"image_id"|"text_id": id, "feature": [...]}``)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, row in zip(ids, np.asarray(feats, dtype=np.float32)):
            f.write(json.dumps({key: int(i), "feature": row.tolist()}) + "\n")
    return path


def run_reference_topk(script: str, image_feats: Path, text_feats: Path, out: Path, k: int = 10) -> list[dict]:
    """Run cn_clip's make_topk_predictions(_tr) on the CPU (``Tensor.cuda`` patched to a no-op)."""
    require_reference()
    import torch

    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **kw: self  # type: ignore[assignment]
    try:
        _quiet_run_module(
            f"cn_clip.eval.{script}",
            [
                "--image-feats",
                str(image_feats),
                "--text-feats",
                str(text_feats),
                "--top-k",
                str(k),
                "--output",
                str(out),
            ],
        )
    finally:
        torch.Tensor.cuda = cuda  # type: ignore[assignment]
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def reference_functions(module: str, names: Sequence[str], namespace: dict | None = None) -> dict:
    """Compile just the named top-level functions of a cn_clip module (whose imports may be unavailable)."""
    require_reference()
    import importlib.util

    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    ns = dict(namespace or {})
    exec(compile(ast.Module(body=body, type_ignores=[]), spec.origin, "exec"), ns)
    return {n: ns[n] for n in names}


def make_imagenet(root: Path, classes: Sequence[str], per_class: int = 2, split: str = "test") -> Path:
    """``<root>/imagenet/<split>/<class>/*.jpg|png`` with small images; returns the split folder."""
    folder = root / "imagenet" / split
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            fmt = "JPEG" if (c + j) % 2 == 0 else "PNG"
            mode = "P" if fmt == "PNG" and c % 2 == 0 else "RGB"
            data = make_image(100 * c + j, (24 + c, 30), fmt, mode)
            (folder / name / f"img_{j}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(data)
    return folder


def make_elevater(
    datasets: Path,
    folder: str,
    class_names: Sequence[str],
    per_class: int = 2,
    padded: bool | None = None,
    index: Sequence[int] | None = None,
) -> Path:
    """``<datasets>/<folder>/`` in Chinese-CLIP's ELEVATER layout: ``test/<class id>/``, ``label_cn.txt``, ``label.txt``.

    Class ids are written here by the documented rule (``0``-``9`` up to 10 classes, else
    3-digit), independently of the package's own; ``padded`` forces one form (for bad layouts).
    """
    root = datasets / folder
    n = len(class_names)
    pad = n > 10 if padded is None else padded
    for c in range(n):
        d = root / "test" / (f"{c:03d}" if pad else str(c))
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            fmt = "JPEG" if (c + j) % 2 == 0 else "PNG"
            (d / f"{c}_{j}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(
                make_image(1000 + 31 * c + j, (28, 28 + j), fmt)
            )
    (root / "label_cn.txt").write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    (root / "label.txt").write_text("".join(f"class {c}\n" for c in range(n)), encoding="utf-8")
    if index is not None:
        (root / "index.json").write_text(json.dumps(list(index)), encoding="utf-8")
    return root


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    """Zip ``folder``'s files as ``<prefix><folder name>/...`` (``prefix=None``: its content at the top)."""
    import zipfile

    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder if prefix is None else folder.parent)
            zf.write(path, (prefix or "") + rel.as_posix())
    return archive


def elevater_all_zip(datasets: dict[str, Path], archive: Path, inner_dir: str = "ELEVATER_all/") -> Path:
    """An ``ELEVATER_all.zip`` in miniature: one ``<folder>.zip`` per dataset folder, plus a stray file."""
    import zipfile

    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(inner_dir + "README.txt", "ELEVATER, Chinese version (test miniature)\n")
        for folder, path in datasets.items():
            inner = archive.parent / f".{folder}.zip"
            zip_folder(path, inner)
            zf.write(inner, f"{inner_dir}{folder}.zip")
            inner.unlink()
    return archive
