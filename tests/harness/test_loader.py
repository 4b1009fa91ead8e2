"""The threaded batch loader: the same ids and bit-equal tensors as a plain DataLoader, in any worker count."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch
from torch.utils.data import DataLoader

from qaclip_core.transforms import image_transform
from qaclip_harness.data.imagenet import ImageNetFolder, IndexedImages
from qaclip_harness.data.loader import DECODE_NICENESS, ImageBatchLoader, resolve_workers, writes_into_slots
from qaclip_harness.data.retrieval import LmdbImages, TextRecord, write_retrieval_split
from qaclip_harness.errors import DatasetError
from tests.datasets_util import IMAGE_IDS, make_imagenet, sample_images

RES = 40
BATCHES = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19, 20], [21, 22, 23, 24]]


@pytest.fixture(scope="module")
def lmdb_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    texts = [TextRecord(text_id=i, text="一张图片", image_ids=[i]) for i in IMAGE_IDS]
    folder = write_retrieval_split(root, "Loader-CN", "test", sample_images(), texts)
    return LmdbImages(folder / "lmdb" / "test" / "imgs", image_transform(RES))


def _plain(dataset, batches):
    """What torch's DataLoader makes of the same batches: the baseline."""
    out = []
    for batch in DataLoader(dataset, batch_sampler=batches, num_workers=0):
        ids, images = batch
        out.append(([int(i) for i in ids], images))
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for (ids, images), (want_ids, want_images) in zip(got, want):
        assert ids == want_ids
        assert images.dtype == torch.float32 and images.is_contiguous()
        assert torch.equal(images, want_images)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_lmdb_slots_equal_dataloader(lmdb_images, workers):
    assert writes_into_slots(lmdb_images)
    _assert_same(list(ImageBatchLoader(lmdb_images, BATCHES, num_workers=workers)), _plain(lmdb_images, BATCHES))


def test_batches_in_the_order_given(lmdb_images):
    """A torchrun rank gets every world-th batch; the loader keeps whatever order it is handed."""
    batches = [[20, 3], [9], [0, 24, 12, 1]]
    _assert_same(list(ImageBatchLoader(lmdb_images, batches, num_workers=2, prefetch=1)), _plain(lmdb_images, batches))


def test_datasets_without_slots_are_stacked(lmdb_images):
    class Items:
        """(id, tensor) items only, as a foreign encoder's dataset gives them."""

        def __len__(self):
            return len(lmdb_images)

        def __getitem__(self, i):
            return lmdb_images[i]

    assert not writes_into_slots(Items())
    for workers in (0, 2):
        _assert_same(list(ImageBatchLoader(Items(), BATCHES, num_workers=workers)), _plain(lmdb_images, BATCHES))


def test_imagenet_folder_slots_equal_its_items(tmp_path):
    folder = make_imagenet(tmp_path, ["n01", "n02", "n03"], per_class=3)
    base = ImageNetFolder(folder, transform=image_transform(RES))
    data = IndexedImages(base)
    assert writes_into_slots(data)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    _assert_same(list(ImageBatchLoader(data, batches, num_workers=2)), _plain(data, batches))
    # decoding from the file's bytes equals the folder's own loader (torchvision's PIL loader)
    for i in range(len(base)):
        assert torch.equal(data[i][1], base[i][0])
    assert all(d is not None for _, d in data.item_digests())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_names_its_id_and_stops_cleanly(tmp_path, workers):
    images = sample_images()
    images[IMAGE_IDS[5]] = images[IMAGE_IDS[5]][:60]  # truncated
    texts = [TextRecord(text_id=i, text="图", image_ids=[i]) for i in IMAGE_IDS]
    folder = write_retrieval_split(tmp_path, "Bad-CN", "test", images, texts)
    data = LmdbImages(folder / "lmdb" / "test" / "imgs", image_transform(RES))
    bad_index = data.ids.index(IMAGE_IDS[5])
    batches = [list(range(i, min(i + 4, len(data)))) for i in range(0, len(data), 4)]
    before = threading.active_count()
    seen = []

    def read_all() -> None:
        for ids, _ in ImageBatchLoader(data, batches, num_workers=workers):
            seen.extend(ids)

    with pytest.raises(DatasetError, match=f"image id {IMAGE_IDS[5]} cannot be decoded as an image"):
        read_all()
    assert seen == data.ids[: bad_index // 4 * 4]  # every batch before the bad one arrived
    assert threading.active_count() == before  # no decode thread is left behind


@pytest.mark.skipif(
    not hasattr(threading, "get_native_id") or not hasattr(os, "getpriority"), reason="POSIX thread priorities"
)
def test_decode_threads_yield_to_the_model(lmdb_images):
    """Decode threads run at a lower priority than the thread that consumes the batches."""
    seen = set()

    class Recording(LmdbImages):
        def load_image(self, index):
            seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().load_image(index)

    data = Recording(lmdb_images.path, image_transform(RES))
    list(ImageBatchLoader(data, BATCHES, num_workers=2))
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if sys.platform.startswith("linux"):
        assert seen == {min(19, main + DECODE_NICENESS)}


def test_abandoned_iteration_stops_its_threads(lmdb_images):
    before = threading.active_count()
    iterator = iter(ImageBatchLoader(lmdb_images, BATCHES, num_workers=3))
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def test_empty_and_one_item(lmdb_images):
    assert list(ImageBatchLoader(lmdb_images, [], num_workers=2)) == []
    [(ids, images)] = list(ImageBatchLoader(lmdb_images, [[3]], num_workers=2))
    assert ids == [lmdb_images.ids[3]] and images.shape == (1, 3, RES, RES)


def test_resolve_workers():
    assert resolve_workers(3) == 3 and resolve_workers("0") == 0
    assert 1 <= resolve_workers("auto") <= 8 and resolve_workers(None) == resolve_workers("AUTO")
    assert resolve_workers("auto", processes=10_000) == 1 and resolve_workers(3, processes=4) == 3
    for bad in ("-1", "two", -2):
        with pytest.raises(ValueError, match="'auto' or an integer >= 0"):
            resolve_workers(bad)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        ImageBatchLoader([], [], num_workers=-1)
    with pytest.raises(ValueError, match="batch 1 is empty"):
        ImageBatchLoader([], [[0], []])
