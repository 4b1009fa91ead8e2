"""The pixel cache: bit-equal to decoding (probe photos, every PIL mode, 224 and 336 px), atomic, two-writer safe,
refused on a full disk, within its budget, and never used for data of an unknown build."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from qaclip_core.transforms import image_transform
from qaclip_harness.cache import Cache, space
from qaclip_harness.cache.pixels import PixelStore
from qaclip_harness.cache.space import CacheWarning
from qaclip_harness.data.imagenet import ImageNetFolder, IndexedImages
from qaclip_harness.data.loader import ImageBatchLoader
from qaclip_harness.data.retrieval import LmdbImages, TextRecord, write_retrieval_split
from qaclip_harness.files import temp_path
from qaclip_harness.probe.probe_set import IMAGES_DIR, load_probe_set, read_manifest
from tests.datasets_util import make_imagenet

PROBE = load_probe_set()
# every PIL mode of the probe set: grey, 1-bit, palette, 16-bit, CMYK, alpha... (a mode added later is covered too)
PROBE_MODES = {"1", "CMYK", "I;16", "L", "LA", "P", "RGB", "RGBA"}


def test_the_probe_set_has_the_modes_this_file_claims():
    assert {im.mode for im in PROBE.images} >= PROBE_MODES


@pytest.mark.parametrize("resolution", [224, 336])
def test_from_pixels_is_bit_equal_to_the_transform_on_every_probe_image(resolution):
    transform = image_transform(resolution)
    for name, image in zip(PROBE.image_names, PROBE.images):
        want = transform(image)  # torchvision's Resize, RGB, ToTensor, Normalize: the reference's steps
        pixels = transform.pixels(image)
        assert pixels.dtype == np.uint8 and pixels.shape == (resolution, resolution, 3), name
        got = transform.from_pixels(torch.from_numpy(pixels.copy())[None])[0]
        assert got.dtype == torch.float32 and torch.equal(got, want), (
            f"{name} ({image.mode}) differs at {resolution} px"
        )


def test_from_pixels_is_bit_equal_for_every_value_of_every_channel():
    transform = image_transform(16)
    values = np.arange(256, dtype=np.uint8)
    rng = np.random.default_rng(0)
    # 256 pixels per channel, each value once, shuffled per channel so that channels differ
    square = np.stack([rng.permutation(values) for _ in range(3)], axis=-1).reshape(16, 16, 3)
    want = transform.normalize(torch.from_numpy(square).permute(2, 0, 1).float().div(255))
    got = transform.from_pixels(torch.from_numpy(square)[None])[0]
    assert torch.equal(got, want)


def _probe_lmdb(root, resolution):
    data = {i: (IMAGES_DIR / name).read_bytes() for i, name in enumerate(read_manifest()["images"], start=1)}
    texts = [TextRecord(text_id=i, text="图片", image_ids=[i]) for i in data]
    folder = write_retrieval_split(root, "Probe-CN", "test", data, texts)
    return LmdbImages(folder / "lmdb" / "test" / "imgs", image_transform(resolution))


def _batches(n, size=7):
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def _floats(dataset, workers, **pixel):
    out = []
    for ids, batch in ImageBatchLoader(dataset, _batches(len(dataset)), num_workers=workers, **pixel):
        out.append((ids, dataset.transform.from_pixels(batch) if batch.dtype == torch.uint8 else batch))
    return out


@pytest.mark.parametrize("resolution", [224, 336])
def test_loader_through_the_pixel_cache_is_bit_equal_to_decoding(tmp_path, resolution):
    """Real photos and every probe mode in an LMDB: decode, build the cache, read it back; the same tensors each time."""
    images = _probe_lmdb(tmp_path / "data", resolution)
    store = PixelStore(tmp_path / "cache")
    keys = [k for k, _ in images.item_digests()]
    fields = PixelStore.fields("f" * 64, resolution, {"transform": repr(images.transform)}, "test")
    decoded = _floats(images, 2)
    writer = store.writer(fields, keys, "probe")
    built = _floats(images, 2, pixel_writer=writer)
    assert writer.commit() is not None
    cached = store.open(fields, keys)
    assert isinstance(cached.array, np.memmap) and not cached.array.flags.writeable
    read = _floats(images, 2, pixels=cached)
    read_inline = _floats(images, 0, pixels=cached)
    for (ids, want), *others in zip(decoded, built, read, read_inline):
        for other_ids, got in others:
            assert other_ids == ids and torch.equal(got, want)


def test_loader_through_the_pixel_cache_on_class_folders(tmp_path):
    """ImageNet/ELEVATER folders (RGB conversion before the resize) take the same path, equally exact."""
    folder = ImageNetFolder(make_imagenet(tmp_path, ["a", "b", "c"], per_class=3), transform=image_transform(40))
    images = IndexedImages(folder)
    store = PixelStore(tmp_path / "cache")
    keys = [k for k, _ in images.item_digests()]
    fields = PixelStore.fields("e" * 64, 40, {}, "test")
    writer = store.writer(fields, keys, "folders")
    _floats(images, 1, pixel_writer=writer)
    writer.commit()
    for (ids, want), (got_ids, got) in zip(_floats(images, 0), _floats(images, 2, pixels=store.open(fields, keys))):
        assert ids == got_ids and torch.equal(got, want)


def _entry(store, key_seed, n=4, r=8):
    keys = list(range(n))
    fields = PixelStore.fields(key_seed * 64, r, {}, "test")
    writer = store.writer(fields, keys, f"entry {key_seed}")
    assert writer is not None
    for i in keys:
        writer.put(i, np.full((r, r, 3), i, dtype=np.uint8))
    return fields, keys, writer


def test_an_entry_appears_whole_or_not_at_all(tmp_path):
    store = PixelStore(tmp_path)
    fields, keys, writer = _entry(store, "a")
    assert store.open(fields, keys) is None  # still being written: invisible
    assert writer.tmp.is_dir() and writer.tmp.name == temp_path(writer.final, folder=True).name
    writer.written[2] = False  # an item never written (a decode that failed): the entry is dropped
    assert writer.commit() is None and not writer.tmp.exists() and store.open(fields, keys) is None
    fields, keys, writer = _entry(store, "a")
    assert writer.commit() is not None
    assert store.open(fields, keys).array[3].max() == 3
    with pytest.warns(CacheWarning, match="holds other items|other items than the 3"):
        assert store.open(fields, keys[:-1]) is None  # other items: not this entry


_OTHER_WORKER = """
import sys
import numpy as np
from qaclip_harness.cache.pixels import PixelStore
store = PixelStore(sys.argv[1])
fields = PixelStore.fields("b" * 64, 8, {}, "test")
writer = store.writer(fields, [0, 1, 2, 3], "worker 2")
for i in range(4):
    writer.put(i, np.full((8, 8, 3), i, dtype=np.uint8))
print(writer.commit())
"""


def test_two_writers_of_one_entry_leave_one_whole_entry(tmp_path):
    """Two pytest workers building the same pixels: the one that renames second finds the entry and drops its copy."""
    import subprocess
    import sys

    store = PixelStore(tmp_path)
    fields, keys, first = _entry(store, "b")  # this worker has decoded everything, not yet renamed
    other = subprocess.run(
        [sys.executable, "-c", _OTHER_WORKER, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == str(first.final)  # the other worker's entry is in place
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # losing the race is not worth a warning
        assert first.commit() == first.final
    assert not first.tmp.exists()
    assert [p.name for p in (tmp_path / "pixels").iterdir()] == [first.final.name]
    assert int(store.open(fields, keys).array[1, 0, 0, 0]) == 1


def test_a_full_disk_is_refused_with_one_line(tmp_path, monkeypatch):
    store = PixelStore(tmp_path)
    fields = PixelStore.fields("c" * 64, 224, {}, "test")
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: type("U", (), {"free": 2 << 30})())
    with pytest.warns(
        CacheWarning,
        match=r"pixel cache of MUGE \(4\.61 GB\) not cached: it needs 4\.61 GB and the disk .* has 2\.15 GB free",
    ):
        assert store.writer(fields, list(range(30588)), "MUGE") is None
    assert not list((tmp_path / "pixels").iterdir())


def test_no_space_while_allocating_is_refused_with_one_line(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    store = PixelStore(tmp_path)
    with pytest.warns(CacheWarning, match="not written: no space left on the device"):
        assert store.writer(PixelStore.fields("d" * 64, 8, {}, "test"), [1, 2], "tiny") is None
    assert not list((tmp_path / "pixels").iterdir())  # the temporary went with it


def test_budget_evicts_the_least_recently_used_first(tmp_path, monkeypatch):
    store = PixelStore(tmp_path)
    entries = []
    for seed, used in (("1", 100), ("2", 300), ("3", 200)):
        fields, keys, writer = _entry(store, seed, n=100, r=32)  # 307 kB each
        writer.commit()
        os.utime(writer.final / "meta.json", (used, used))
        entries.append((fields, keys))
    monkeypatch.setenv(space.BUDGET_ENV, "0.001")  # 1 MB: room for three of them
    _entry(store, "4", n=100, r=32)[2].commit()
    assert store.open(*entries[0]) is None  # used longest ago: evicted
    assert store.open(*entries[1]) is not None and store.open(*entries[2]) is not None
    monkeypatch.setenv(space.BUDGET_ENV, "0.0001")
    with pytest.warns(CacheWarning, match="more than the cache budget"):
        assert store.writer(PixelStore.fields("5" * 64, 32, {}, "t"), list(range(100)), "too big") is None


def test_a_bad_budget_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(space.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="QACLIP_CACHE_BUDGET_GB 'lots': expected a number of gigabytes"):
        space.budget_bytes()


def test_data_of_an_unknown_build_is_not_pixel_cached(tmp_path):
    from qaclip_harness.eval.cached import CaseCache, image_features
    from qaclip_harness.eval.runner import EvalOptions

    images = _probe_lmdb(tmp_path / "data", 32)

    class Tiny:  # features = the mean colour: enough to see the path, no model needed
        name, device, dtype = "tiny", torch.device("cpu"), torch.float32

        def encode_image(self, x):
            return x.mean(dim=(2, 3)) + 1.0

    cc = CaseCache(Cache.at(tmp_path / "cache"), {"model": "tiny"})
    opts = EvalOptions(progress=False, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        _, unknown, prov = image_features(
            cc, Tiny(), images, opts, "probe", {"images": "x" * 64, "split": "test", "build": None}
        )
    assert prov.note == "no pixel cache: the data build is unknown"
    assert not (tmp_path / "cache" / "pixels").exists()
    _, known, prov = image_features(
        cc, Tiny(), images, opts, "probe", {"images": "y" * 64, "split": "test", "build": "b"}
    )
    assert prov.note == "pixels decoded and stored in the pixel cache" and torch.equal(known, unknown)
    assert len(list((tmp_path / "cache" / "pixels").iterdir())) == 1


# ---- every entry checked on read; the key the same in every process


def _built(tmp_path, resolution=32):
    """A pixel entry of the probe LMDB built as the suite builds it (decode definition and canary), and its parts."""
    from qaclip_harness.cache.pixels import decode_definition, probe_pixels

    images = _probe_lmdb(tmp_path / "data", resolution)
    store = PixelStore(tmp_path / "cache")
    keys = [k for k, _ in images.item_digests()]
    fields = PixelStore.fields("f" * 64, resolution, decode_definition(images), None)
    writer = store.writer(fields, keys, "probe", probe_pixels(images))
    decoded = _floats(images, 2, pixel_writer=writer)
    assert writer.commit() is not None
    return images, store, keys, fields, decoded


def test_a_damaged_row_is_decoded_instead_and_named(tmp_path):
    from qaclip_harness.cache.pixels import probe_pixels

    images, store, keys, fields, decoded = _built(tmp_path)
    folder = store.folder / next(p.name for p in store.folder.iterdir())
    array = np.load(folder / "pixels.npy", mmap_mode="r+")
    array[5] = np.roll(array[5], 1, axis=0)  # one image's rows shifted: the size and the record untouched
    array.flush()
    del array
    cached = store.open(fields, keys, lambda: probe_pixels(images))
    assert cached is not None  # the record and the canary check out; the damage shows row by row
    read = _floats(images, 2, pixels=cached)
    for (ids, want), (got_ids, got) in zip(decoded, read):
        assert ids == got_ids and torch.equal(got, want)  # item 5 decoded again, bit-equal
    assert cached.damaged == [5]


@pytest.mark.parametrize("damage", ["meta", "foreign", "rows", "shape", "canary"])
def test_a_damaged_or_foreign_entry_is_one_warning_then_decoded(tmp_path, damage):
    import json

    from qaclip_harness.cache.pixels import probe_pixels

    images, store, keys, fields, _ = _built(tmp_path)
    folder = next(store.folder.iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    canary = lambda: probe_pixels(images)  # noqa: E731
    if damage == "meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "foreign":
        meta["fields"]["data"] = "0" * 64  # a record of another entry placed under this key
        (folder / "meta.json").write_text(json.dumps(meta))
    elif damage == "rows":
        rows = np.load(folder / "rows.npy")
        rows[0, 0] ^= 1
        np.save(folder / "rows.npy", rows)
    elif damage == "shape":
        np.save(folder / "pixels.npy", np.zeros((len(keys), 8, 8, 3), dtype=np.uint8))
    else:  # the decoding of this run is not the one that built the entry
        canary = lambda: probe_pixels(images)[:, ::-1]  # noqa: E731
    with pytest.warns(CacheWarning, match=rf"pixel cache {folder} cannot be used .*decoding instead"):
        assert store.open(fields, keys, canary) is None
    assert not folder.exists()  # taken out of use, so that a rebuilt entry can be installed


def test_the_decode_definition_holds_the_decoding_code_and_nothing_process_specific(tmp_path):
    from qaclip_harness.cache.pixels import decode_definition

    images = _probe_lmdb(tmp_path / "data", 32)
    definition = decode_definition(images)
    assert " at 0x" in repr(images.transform)  # the transform's repr holds a function's address...
    assert " at 0x" not in json.dumps(definition)  # ...which the key leaves out
    code = (
        "import json, sys\n"
        "from qaclip_core.transforms import image_transform\n"
        "from qaclip_harness.data.retrieval import LmdbImages\n"
        "from qaclip_harness.cache.pixels import decode_definition\n"
        "print(json.dumps(decode_definition(LmdbImages(sys.argv[1], image_transform(32))), sort_keys=True))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(images.path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert other.returncode == 0, other.stderr
    mine = {k: v for k, v in definition.items() if k != "outside"}  # pytest's process loads its test modules
    theirs = {k: v for k, v in json.loads(other.stdout).items() if k != "outside"}
    assert theirs == json.loads(json.dumps(mine))


def test_the_decode_definition_moves_with_the_readers_transforms_and_loaders_source(tmp_path, monkeypatch):
    from qaclip_harness.cache import pixels

    images = _probe_lmdb(tmp_path / "data", 32)
    seen = []
    monkeypatch.setattr(pixels, "module_digest", lambda *mods: seen.extend(m.__name__ for m in mods) or "x")
    pixels.decode_definition(images)
    assert {"qaclip_harness.data.retrieval", "qaclip_core.transforms", "qaclip_harness.data.loader"} <= set(seen)


_SECOND_PROCESS = """
import sys, warnings
import torch
from qaclip_harness.cache import Cache
from qaclip_harness.eval.cached import CaseCache, image_features
from qaclip_harness.eval.runner import EvalOptions
from qaclip_harness.data.retrieval import LmdbImages
from qaclip_core.transforms import image_transform

class Tiny:
    name, device, dtype = "tiny", torch.device("cpu"), torch.float32

    def encode_image(self, x):
        return x.mean(dim=(2, 3)) + 1.0

images = LmdbImages(sys.argv[1], image_transform(32))
from qaclip_harness.cache.space import CacheWarning
cc = CaseCache(Cache.at(sys.argv[2]), {"model": "tiny"})
opts = EvalOptions(progress=False, batch_size=8)
warnings.simplefilter("error", CacheWarning)
_, feats, prov = image_features(cc, Tiny(), images, opts, "probe", {"images": "y" * 64, "split": "test", "build": "b"})
print(prov.status, "|", prov.note, "|", float(feats.sum()))
"""


def test_a_second_process_reuses_the_pixel_cache_and_adds_no_entry(tmp_path):
    """Two processes (two runs of the suite) on one cache: the second reads the first one's pixels and writes none."""
    import shutil

    images = _probe_lmdb(tmp_path / "data", 32)
    path, cache = str(images.path), tmp_path / "cache"
    del images  # py-lmdb: one open environment per file and process

    def run():
        out = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS, path, str(cache)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return [part.strip() for part in out.stdout.strip().splitlines()[-1].split("|")]

    first = run()
    assert first[:2] == ["computed", "pixels decoded and stored in the pixel cache"]
    entries = sorted(p.name for p in (cache / "pixels").iterdir())
    assert len(entries) == 1
    shutil.rmtree(cache / "features")  # the features again, so that the pixels are needed
    second = run()
    assert second[:2] == ["computed", "pixels read from the pixel cache"] and second[2] == first[2]
    assert sorted(p.name for p in (cache / "pixels").iterdir()) == entries


def test_refresh_rebuilds_the_pixel_entry(tmp_path):
    from qaclip_harness.cache.pixels import probe_pixels

    images, store, keys, fields, _ = _built(tmp_path)
    folder = next(store.folder.iterdir())
    (folder / "left by the first build").touch()
    refresh = PixelStore(tmp_path / "cache", reads=False, writes=True)  # --refresh-cache
    writer = refresh.writer(fields, keys, "probe", probe_pixels(images))
    _floats(images, 2, pixel_writer=writer)
    assert writer.commit() == folder and not (folder / "left by the first build").exists()
    assert store.open(fields, keys, lambda: probe_pixels(images)) is not None
