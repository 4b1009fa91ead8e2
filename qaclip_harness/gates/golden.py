"""``golden-<model>``: probe features against ones recorded earlier by the same model, precision and device kind.

A golden folder holds one file per (model, precision, device kind), ``<model>-<precision>-<kind>.pt``
(normalised fp32 features and the probe items they belong to), and ``manifest.json`` saying
how each was recorded: checkpoint sha256, qaclip_core version and git commit, torch and CUDA
versions, device name, date and the probe set's digest. Writers lock the manifest, so
pytest-xdist workers may record at once.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Union

import torch

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import key_text, read_json
from qaclip_harness.files import OutputError, atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from qaclip_harness.gates.drift import TOWERS, TowerDrift, drift_table, top1_agreement, tower_drift
from qaclip_harness.gates.features import ProbeFeatures
from qaclip_harness.gates.tolerances import GoldenTolerance
from qaclip_harness.probe import ProbeSet

FORMAT = 1
MANIFEST = "manifest.json"
PathLike = Union[str, "os.PathLike[str]"]


class GoldenError(QAClipError):
    """A golden file or manifest is missing, unreadable, or was recorded on other inputs."""


class GoldenMissing(GoldenError):
    """No golden features for this model, precision and device kind (record them with --golden-save)."""


def device_kind(device: str | torch.device) -> str:
    """``cpu``, ``cuda``, ``mps``...: what decides which kernels run."""
    return torch.device(device).type


def golden_name(model: str, precision: str, device: str | torch.device) -> str:
    """File name of the golden features of ``model`` at ``precision`` on ``device``'s kind."""
    return f"{model}-{precision}-{device_kind(device)}.pt"


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime: float) -> str:
    from qaclip_core.pretrained import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    # a transformers folder: the digest of its files' digests (the weights and the configs)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file() and ".cache" not in q.relative_to(p).parts):
        h.update(f"{f.relative_to(p).as_posix()} {sha256_file(f)}\n".encode())
    return h.hexdigest()


def checkpoint_digest(path: PathLike) -> str:
    """sha256 of a checkpoint file, or of the files of a model folder (cached per size and mtime)."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        # checked: a failed `git status` printing nothing must not read as a clean tree
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _cpu_name() -> str:
    try:  # Linux: the model name the kernel reports
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | torch.device) -> dict:
    """What produced a set of features: versions, commit, device, date."""
    from qaclip_core import __version__

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {
        "qaclip_core": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(dev),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _manifest_path(directory: Path) -> Path:
    return directory / MANIFEST


def read_manifest(directory: PathLike) -> dict:
    """The golden folder's manifest (empty when there is none yet)."""
    path = _manifest_path(Path(directory))
    if not path.is_file():
        return {"format": FORMAT, "goldens": {}}
    doc = read_json(path, GoldenError)  # strict: a duplicate key, deep nesting, a bad byte named with the place
    if not isinstance(doc, dict) or not isinstance(doc.get("goldens"), dict):
        raise GoldenError(f"{path}: expected an object with a 'goldens' mapping (file name -> how it was recorded)")
    for name, entry in doc["goldens"].items():
        if not isinstance(entry, dict):
            raise GoldenError(
                f"{path}: goldens.{key_text(name)}: expected an object saying how the file was recorded "
                f"(checkpoint_sha256, file_sha256, probe_digest, ...), got a {type(entry).__name__}"
            )
    return doc


def save_golden(
    directory: PathLike,
    model: str,
    precision: str,
    device: str | torch.device,
    features: ProbeFeatures,
    checkpoint: PathLike,
    probe: ProbeSet,
) -> Path:
    """Write ``features`` as the golden of (model, precision, device kind) and record it in the manifest."""
    from filelock import FileLock

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the golden folder {directory}: {e.strerror or e}") from None
    remove_stale_temporaries(directory)  # what a killed or failed earlier save left behind
    name = golden_name(model, precision, device)
    payload = {
        "format": FORMAT,
        "image": features.image.float().cpu().contiguous(),
        "text": features.text.float().cpu().contiguous(),
        "image_names": list(features.image_names),
        "captions": list(features.captions),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(directory / name, data)
    entry = {
        "model": model,
        "precision": precision,
        "device_kind": device_kind(device),
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        "probe_digest": probe.digest,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        **environment(device),
    }
    with FileLock(str(directory / f".{MANIFEST}.lock")):
        doc = read_manifest(directory)
        doc["goldens"][name] = entry
        atomic_write_json(_manifest_path(directory), doc, indent=2, ensure_ascii=False, sort_keys=True)
    return directory / name


def load_golden(
    directory: PathLike, model: str, precision: str, device: str | torch.device, probe: ProbeSet
) -> tuple[ProbeFeatures, dict]:
    """The golden features of (model, precision, device kind) and their manifest entry."""
    directory = Path(directory)
    name = golden_name(model, precision, device)
    path = directory / name
    if path.is_file() and not _manifest_path(directory).is_file():
        raise GoldenError(
            f"{path} is there but {_manifest_path(directory)} is missing: without it the file cannot be "
            f"checked (its sha256, checkpoint and probe set); restore the manifest or record the goldens "
            f"again with --golden-save"
        )
    entry = read_manifest(directory)["goldens"].get(name)
    if path.is_file() and entry is None:
        raise GoldenError(
            f"{path} is there but {_manifest_path(directory)} has no entry goldens.{name}: the file cannot "
            f"be checked; record the goldens again with --golden-save"
        )
    if not path.is_file():
        raise GoldenMissing(f"no golden features {name} in {directory} (record them with --golden-save)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("file_sha256"):
        raise GoldenError(
            f"{path}: its sha256 differs from the one {MANIFEST} recorded: the file was changed or damaged"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        feats = ProbeFeatures(
            list(raw["image_names"]), list(raw["captions"]), raw["image"].float(), raw["text"].float()
        )
    except Exception as e:  # a damaged or foreign file: say which
        raise GoldenError(f"{path}: not a golden features file ({type(e).__name__}: {e})") from e
    _check_features(path, feats)
    if (
        entry.get("probe_digest") != probe.digest
        or feats.image_names != list(probe.image_names)
        or feats.captions != list(probe.captions)
    ):
        raise GoldenError(
            f"{path} was recorded on another probe set (digest {str(entry.get('probe_digest'))[:12]}, "
            f"this one {probe.digest[:12]}): record the goldens again with --golden-save"
        )
    return feats, entry


def _check_features(path: Path, feats: ProbeFeatures) -> None:
    """Each tower [N, D] with one row per probe item, one D for both, and no NaN or inf: else name the file."""
    dims = {}
    for tower in TOWERS:
        x, names = feats.tower(tower)
        if x.dim() != 2 or x.shape[0] != len(names):
            raise GoldenError(
                f"{path}: the {tower} features have shape {list(x.shape)}, expected [{len(names)}, D] "
                f"(one row per probe {tower})"
            )
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        if len(bad):
            raise GoldenError(
                f"{path}: the {tower} features hold NaN or inf ({len(bad)} rows, first {names[int(bad[0])]!r}): "
                f"the file is damaged; record the goldens again with --golden-save"
            )
        dims[tower] = x.shape[1]
    if dims["image"] != dims["text"]:
        raise GoldenError(
            f"{path}: the text features are {dims['text']} wide, the image features {dims['image']}; "
            f"expected one width for both"
        )


@dataclass
class GoldenReport:
    """Current probe features against the golden ones."""

    drifts: dict[str, TowerDrift]
    top1: dict[str, tuple[int, int]]  # tower -> (items whose best match is unchanged, items)
    tolerance: GoldenTolerance
    notes: list[str] = field(default_factory=list)

    def tower_ok(self, tower: str) -> bool:
        """Whether ``tower`` is within both limits."""
        d = self.drifts[tower]
        return d.max_abs <= self.tolerance.max_abs and d.min_cos >= self.tolerance.min_cos

    @property
    def ok(self) -> bool:
        """Every tower within max_abs and min_cos."""
        return all(self.tower_ok(t) for t in self.drifts)

    def table(self) -> str:
        """The drift table: max |delta|, min cosine, top-1 agreement and worst item per tower."""
        t = self.tolerance
        limits = {
            tower: f"{t.precision}: max |Δ| <= {t.max_abs:.0e}, min cos >= {t.min_cos}"
            + ("" if self.tower_ok(tower) else " FAIL")
            for tower in self.drifts
        }
        extra: dict[str, Sequence[str]] = {tower: (f"top-1 {a}/{n}",) for tower, (a, n) in self.top1.items()}
        return "\n".join([drift_table(self.drifts, limits, extra), *self.notes])

    def measured(self) -> dict[str, float]:
        """Flat numbers for the report."""
        out: dict[str, float] = {}
        for tower, d in self.drifts.items():
            out[f"{tower}_max_abs"] = d.max_abs
            out[f"{tower}_min_cos"] = d.min_cos
            out[f"{tower}_top1_agree"] = self.top1[tower][0] / max(1, self.top1[tower][1])
        return out


def compare_golden(
    current: ProbeFeatures, golden: ProbeFeatures, tolerance: GoldenTolerance, golden_file: PathLike | None = None
) -> GoldenReport:
    """Drift per tower, and per tower the share of items whose best match moved.

    Top-1 agreement isolates each tower: an image's best caption is computed with its current
    features against the *golden* caption features (and the other way round for captions).
    Features that cannot be compared (another width, NaN) raise GoldenError naming ``golden_file``.
    """
    try:
        drifts = {t: tower_drift(t, current.tower(t)[0], golden.tower(t)[0], golden.tower(t)[1]) for t in TOWERS}
    except ValueError as e:
        raise GoldenError(
            f"{golden_file or 'the golden features'}: cannot compare the current features (first run) "
            f"with these golden ones (second run): {e}"
        ) from None
    g_img, g_txt = golden.image.double(), golden.text.double()
    top1 = {
        "image": (top1_agreement(g_img @ g_txt.t(), current.image.double() @ g_txt.t()), len(g_img)),
        "text": (top1_agreement(g_txt @ g_img.t(), current.text.double() @ g_img.t()), len(g_txt)),
    }
    return GoldenReport(drifts, top1, tolerance)
