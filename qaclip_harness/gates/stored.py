"""``reference-<model>`` and ``precision-<model>-<p>``: our probe features against the reference's, stored in the repository.

``tools/fixture_expected.py`` runs the reference implementation (cn_clip) on the fixture
checkpoints over the probe set and stores its normalised features under
``expected/reference-features/`` (one ``.npy`` per model, precision and tower, each pinned by
sha256 in ``MANIFEST.yaml``, re-derived in CI). The suite compares ours with them, so the
offline gate does not need cn_clip where it runs: in fp32 at the parity tolerance (with the
ranking check), the images both through ``preprocess`` and through the batch loader's in-place
path that dataset evaluation uses; in bf16 and fp16 (on the CPU) within the measured noise of
``tolerances.yaml`` ``reference_precision``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from qaclip_core.errors import QAClipError
from qaclip_harness.data.loader import ImageBatchLoader
from qaclip_harness.gates.drift import TOWERS, TowerDrift, drift_table, tower_drift
from qaclip_harness.gates.features import ProbeFeatures
from qaclip_harness.probe import ProbeSet
from qaclip_harness.tensors import normalise

FOLDER = "reference-features"


class StoredFeaturesError(QAClipError):
    """The stored reference features are missing, changed (sha256) or do not fit the probe set or checkpoint."""


def read_manifest(folder: Path) -> dict:
    """``MANIFEST.yaml`` of the stored features (StoredFeaturesError naming the file when absent or malformed)."""
    path = Path(folder) / "MANIFEST.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise StoredFeaturesError(
            f"{path}: cannot read the stored reference features' manifest ({type(e).__name__}: {e}); "
            "python tools/fixture_expected.py writes it"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise StoredFeaturesError(
            f"{path}: expected a mapping with 'files' (name -> model, precision, tower, shape, sha256)"
        )
    return doc


def load_stored(
    folder: Path, model: str, precision: str, probe: ProbeSet, checkpoint_sha256: str | None
) -> ProbeFeatures:
    """The reference's features of ``model`` at ``precision``, each file checked against its pinned sha256, the probe set and the checkpoint."""
    folder = Path(folder)
    doc = read_manifest(folder)
    where = folder / "MANIFEST.yaml"
    if doc.get("probe_digest") != probe.digest:
        raise StoredFeaturesError(
            f"{where}: computed on probe set {str(doc.get('probe_digest'))[:12]}..., this one is "
            f"{probe.digest[:12]}...: rerun tools/fixture_expected.py"
        )
    stored_sha = (doc.get("checkpoints") or {}).get(model)
    if checkpoint_sha256 is not None and stored_sha != checkpoint_sha256:
        raise StoredFeaturesError(
            f"{where}: {model}'s features come from checkpoint {str(stored_sha)[:12]}..., "
            f"the card pins {checkpoint_sha256[:12]}...: rerun tools/fixture_expected.py"
        )
    towers: dict[str, torch.Tensor] = {}
    for name, entry in doc["files"].items():
        if entry.get("model") != model or entry.get("precision") != precision:
            continue
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoredFeaturesError(f"{path}: cannot be read ({e}); {where} lists it") from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise StoredFeaturesError(
                f"{path}: sha256 differs from the one {where} pins: the file was changed or damaged"
            )
        array = np.load(io.BytesIO(data), allow_pickle=False)
        want = len(probe.images) if entry["tower"] == "image" else len(probe.captions)
        if array.ndim != 2 or array.shape[0] != want:
            raise StoredFeaturesError(f"{path}: shape {array.shape}, expected {want} rows (one per probe item)")
        towers[entry["tower"]] = torch.from_numpy(array.astype(np.float32))
    missing = [t for t in TOWERS if t not in towers]
    if missing:
        raise StoredFeaturesError(f"{where}: no {precision} {'/'.join(missing)} features of {model}")
    return ProbeFeatures(list(probe.image_names), list(probe.captions), towers["image"], towers["text"])


class _ProbeImages:
    """The probe images as a dataset the batch loader decodes into its slots (the path dataset evaluation takes)."""

    def __init__(self, images: Sequence[Image.Image], transform):
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def item_id(self, index: int) -> int:
        """The item's position."""
        return index

    def load_image(self, index: int) -> Image.Image:
        """The decoded probe image, as the LMDB reader hands it over (its own mode)."""
        return self.images[index]


@torch.no_grad()
def loader_image_features(encoder, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """Normalised image features through :class:`ImageBatchLoader` (the transform's ``into``), as dataset evaluation encodes."""
    dataset = _ProbeImages(images, encoder.preprocess)
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    outs = [normalise(encoder.encode_image(pixels)).float().cpu() for _, pixels in ImageBatchLoader(dataset, batches)]
    return torch.cat(outs)


@dataclass
class StoredReport:
    """Our features against the stored reference's: drift per tower (and the loader path), within max_abs."""

    drifts: dict[str, TowerDrift]
    max_abs: float
    what: str
    notes: list[str]

    @property
    def ok(self) -> bool:
        """Every tower within max_abs."""
        return all(d.max_abs <= self.max_abs for d in self.drifts.values())

    def table(self) -> str:
        """The drift table with its limit."""
        limits = {
            t: f"max |Δ| <= {self.max_abs:.0e}" + (" FAIL" if d.max_abs > self.max_abs else "")
            for t, d in self.drifts.items()
        }
        return "\n".join([f"{self.what}:", drift_table(self.drifts, limits), *self.notes])

    def measured(self) -> dict[str, float]:
        """Flat numbers for the report."""
        out: dict[str, float] = {}
        for t, d in self.drifts.items():
            out[f"{t}_max_abs"] = d.max_abs
            out[f"{t}_min_cos"] = d.min_cos
        return out


def compare_stored(
    ours: ProbeFeatures, reference: ProbeFeatures, max_abs: float, what: str, loader_images: torch.Tensor | None = None
) -> StoredReport:
    """Drift of ``ours`` (and of the loader-path image features) from the stored reference features."""
    drifts = {t: tower_drift(t, ours.tower(t)[0], reference.tower(t)[0], reference.tower(t)[1]) for t in TOWERS}
    if loader_images is not None:
        d = tower_drift("loader", loader_images, reference.image, reference.image_names)
        drifts["loader"] = d
    return StoredReport(drifts, max_abs, what, [])


def cpu_supports(dtype: torch.dtype) -> str | None:
    """None when this torch build runs the fixture's layers in ``dtype`` on the CPU; else why not."""
    try:
        x = torch.randn(2, 3, 8, 8).to(dtype)
        torch.nn.functional.conv2d(x, torch.randn(4, 3, 3, 3).to(dtype))
        torch.nn.functional.layer_norm(torch.randn(2, 8).to(dtype), (8,))
        torch.randn(4, 8).to(dtype) @ torch.randn(8, 4).to(dtype)
        q, k, v = (torch.randn(1, 2, 4, 8).to(dtype) for _ in range(3))
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    except (RuntimeError, NotImplementedError) as e:
        return f"this CPU or torch build has no {dtype} kernels for the fixture's layers ({str(e).splitlines()[0]})"
    return None
