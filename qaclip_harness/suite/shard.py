"""``--shard K/N``: one sweep over N machines, each running the cases of whole models, balanced by cost.

The split is a function of the selected items and N alone (and of the durations file, when one is
given), never of K or of the machine: every shard computes the same split and keeps its own part,
so N jobs of a CI matrix with the same selection cover every case once. All cases of one model
card go to one shard (each machine downloads and loads only its models); the models are placed
largest first, each on the shard with the least cost so far (ties: the lowest shard), the
classic longest-processing-time rule, within 4/3 of the best balance.

The cost of a case is in nominal seconds: the images it encodes times (decoding, plus the vision
tower's FLOPs per image at a nominal device rate), a fixed allowance for a checkpoint gate and for
a throughput case, and one model load per card. With ``--shard-durations`` (an earlier run's
report.json) a case's measured seconds replace its estimate. The numbers only rank and balance:
a wrong estimate costs balance, never a case.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from qaclip_harness.options import OptionError
from qaclip_harness.suite.cases import case_of, report_identity
from qaclip_harness.suite.selection import Selection, case_name, names_of, selection_from

DECODE_S = 2e-3  # seconds to decode and preprocess one image (the first run's dominant cost)
DEVICE_FLOPS = 20e12  # a nominal effective rate of a GPU in fp32, to put FLOPs in seconds
LOAD_S = 10.0  # loading (and on a first run, fetching) one model
GATE_S = 5.0  # a checkpoint gate: a few probe images and captions
THROUGHPUT_S = 10.0  # a throughput case: pytest-benchmark's time budget, whatever the model
DEFAULT_IMAGES = 1000  # a dataset that states no image count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str, option: str = "--shard") -> Shard:
    """``K/N`` with 1 <= K <= N; anything else is an OptionError naming the option and the value."""
    text = str(value).strip()
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise OptionError(option, value, "expected K/N, shard K of N (e.g. 2/4)")
    k, n = (int(p) for p in parts)
    if n < 1:
        raise OptionError(option, value, "expected K/N with N at least 1")
    if not 1 <= k <= n:
        raise OptionError(option, value, f"expected K/N with K from 1 to N ({n}), counted from 1")
    return Shard(k, n)


def load_durations(value: str, option: str = "--shard-durations") -> dict[str, float]:
    """Case name -> seconds from an earlier run's report.json (or its folder); one line naming the file otherwise."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "report.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        results = doc["results"]
        return {
            case_name(r): float(r["seconds"])
            for r in results
            if isinstance(r.get("seconds"), (int, float)) and r.get("status") not in ("skipped", "interrupted")
        }
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionError(option, value, f"cannot read {path} ({e})") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise OptionError(option, value, f"{path} is not a suite report.json (missing {e})") from None


@cache
def vision_gflops(model: str) -> float:
    """Estimated GFLOPs of one image through ``model``'s vision tower (0 when its tower is unknown)."""
    from qaclip_core.model.config import vision_config
    from qaclip_core.registry import get_card

    try:
        card = get_card(model)
        v = vision_config(card.vision)
    except Exception:  # noqa: BLE001 -- an adapter card's descriptive tower name: no estimate, a default cost
        return 0.0
    if v.kind == "vit" and v.patch_size:
        layers = v.layers if isinstance(v.layers, int) else sum(v.layers)
        tokens = (v.image_size // v.patch_size) ** 2 + 1
        # per layer: qkv, output and 4x MLP projections (12 w^2 multiply-adds per token) and attention (2 T w)
        per_layer = 2 * (12 * tokens * v.width**2 + 2 * tokens**2 * v.width)
        return (layers * per_layer + 2 * tokens * 3 * v.patch_size**2 * v.width) / 1e9
    # a ModifiedResNet: scaled from RN50's 10.8 GFLOPs (width 64, 16 blocks, 224 px)
    blocks = sum(v.layers) if isinstance(v.layers, tuple) else v.layers
    return 10.8 * (v.width / 64) ** 2 * (v.image_size / 224) ** 2 * blocks / 16


@cache
def _yaml_test_images(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        count = (doc.get("test_images") or {}).get("count")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return int(count) if isinstance(count, int) else None


def image_count(item: pytest.Item) -> int:
    """Images a reproduction case encodes: its dataset card's split size, else its expected file's test_images."""
    from qaclip_harness.data.catalog import get_dataset

    case = case_of(item)
    if case is None:
        return 0
    try:
        size = get_dataset(case.dataset).split_size or {}
    except Exception:  # noqa: BLE001 -- an expected case of a dataset without a card fails in its own case
        size = {}
    if isinstance(size.get("images"), int):
        return int(size["images"])
    return (_yaml_test_images(str(case.path)) if case.path else None) or DEFAULT_IMAGES


def estimate(item: pytest.Item) -> float:
    """Nominal seconds of one item (see the module's docstring)."""
    ident = report_identity(item)
    if ident is None:
        return THROUGHPUT_S
    images = image_count(item)
    if not images:
        return GATE_S
    return images * (DECODE_S + vision_gflops(ident["model"]) * 1e9 / DEVICE_FLOPS)


def group_of(item: pytest.Item) -> str:
    """The unit a shard takes whole: a model card for a suite case, else the test's architecture or module."""
    ident = report_identity(item)
    if ident is not None:
        return f"model {ident['model']}"
    spec = getattr(item, "callspec", None)
    arch = spec.params.get("arch") if spec else None
    return f"arch {arch}" if isinstance(arch, str) else f"module {item.nodeid.split('::')[0]}"


def split(
    items: Sequence[pytest.Item], count: int, durations: dict[str, float] | None = None
) -> tuple[list[int], list[float]]:
    """The shard (0-based) of every item, and each shard's cost: whole groups, largest first, onto the lightest shard."""
    durations = durations or {}
    costs: dict[str, float] = {}
    for item in items:
        ident = report_identity(item)
        name = case_name(ident) if ident is not None else item.nodeid
        group = group_of(item)
        costs[group] = costs.get(group, LOAD_S if ident is not None else 0.0) + durations.get(name, estimate(item))
    loads = [0.0] * count
    place: dict[str, int] = {}
    for group in sorted(costs, key=lambda g: (-costs[g], g)):
        target = min(range(count), key=lambda k: (loads[k], k))
        place[group] = target
        loads[target] += costs[group]
    return [place[group_of(i)] for i in items], loads


def selection_digest(names: Sequence[str]) -> str:
    """sha256 of the selection's case names (sorted): equal for shards of one selection."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def expected_digest(paths: Sequence[Path]) -> str:
    """sha256 over the expected (tolerance) files a run reads: file name and content, in name order."""
    h = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}, key=lambda p: (p.name, str(p))):
        h.update(path.name.encode("utf-8") + b"\0")
        try:
            h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode("ascii") + b"\n")
        except OSError:
            h.update(b"unreadable\n")
    return h.hexdigest()


SHARD_OUTPUT = "qaclip_shard"  # an xdist worker's shard record, for the controller (which collects nothing)


@dataclass
class ShardPlan:
    """A run's exact selection and shard, read at configure time; ``record`` is filled once the split is made."""

    selection: Selection
    shard: Shard | None = None
    durations: dict[str, float] | None = None
    durations_source: str | None = None
    record: dict | None = None

    @property
    def empty_shard(self) -> bool:
        """Whether the split left this shard nothing to run."""
        return self.record is not None and not self.record["tests"]

    def summary(self) -> str:
        """One line for the terminal: this shard's part of the selection."""
        r = self.record or {}
        models = ", ".join(g.removeprefix("model ") for g in r.get("groups", []) if g.startswith("model ")) or "none"
        head = f"qaclip: shard {r.get('index')}/{r.get('count')}: {len(r.get('cases', []))} of the selection's "
        head += f"{len(r.get('selection', []))} cases ({r.get('tests', 0)} tests), models: {models}"
        cost = r.get("estimated_cost") or [0.0]
        head += f"; estimated cost {cost[int(r.get('index', 1)) - 1]:,.0f} of {sum(cost):,.0f} nominal seconds"
        head += f" (the largest shard {max(cost):,.0f})"
        if not r.get("tests"):
            head += "; the split left this shard nothing to run (more shards than models)"
        return head


def plan_from(get: Callable[[str], Any], source: Callable[[str], str]) -> ShardPlan:
    """The selection and shard options checked (OptionError: one line naming the option and the value)."""
    selection = selection_from(get, source)
    value = get("--shard")
    shard = parse_shard(value, source("--shard")) if value not in (None, "") else None
    durations_value = get("--shard-durations")
    durations = None
    if durations_value not in (None, ""):
        if shard is None:
            raise OptionError(source("--shard-durations"), durations_value, "applies to --shard K/N only")
        durations = load_durations(durations_value, source("--shard-durations"))
    return ShardPlan(selection, shard, durations, str(durations_value) if durations else None)


def apply_shard(plan: ShardPlan, items: list[pytest.Item], config: pytest.Config) -> None:
    """Keep this shard's part of ``items`` (the rest deselected) and record the split in ``plan.record``."""
    if plan.shard is None:
        return
    from qaclip_harness.suite.cases import all_expected

    place, loads = split(items, plan.shard.count, plan.durations)
    mine = [i for i, p in zip(items, place) if p == plan.shard.index - 1]
    others = [i for i, p in zip(items, place) if p != plan.shard.index - 1]
    selection = sorted(names_of(items))
    plan.record = {
        "index": plan.shard.index,
        "count": plan.shard.count,
        "selection": selection,
        "selection_sha256": selection_digest(selection),
        "cases": sorted(names_of(mine)),
        "tests": len(mine),
        "groups": sorted({group_of(i) for i in mine}),
        "estimated_cost": [round(x, 1) for x in loads],
        "durations": plan.durations_source,
        "expected_sha256": expected_digest([c.path for c in all_expected() if c.path is not None]),
    }
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = mine
