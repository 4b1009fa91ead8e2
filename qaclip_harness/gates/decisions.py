"""Per-item decisions: the gate that holds a run to every one of the reference's decisions, not to its totals.

A recall or an accuracy is a count of decisions, so a total cannot tell "every decision as the
reference's" from "one hit lost and another gained". Where the reference's own decisions exist
(the fixture: ``tools/fixture_expected.py`` stores them, computed by cn_clip, under
``expected/reference-decisions/``, each file pinned by sha256 in its expected file), a case
compares every item: for each retrieval query and k, hit or miss; for each zero-shot image, the
predicted class (top-1) and whether the true class is among the top five. Only near-ties may
differ: items whose decision margin in the reference is below the most a correct run can move it.
Where no per-item decisions exist (published numbers: the real datasets), the gate is on totals,
and the report says so.

The near-tie bound (the derivation the numbers rest on)
--------------------------------------------------------
A run is correct when its L2-normalised features differ from the reference's by at most ``d``
per component (``d``: the drift the suite accepts for the run: the measured CPU noise that
``reference-<model>`` holds the qaclip_core model to on the CPU, the parity tolerance anywhere
else). With ``D`` components, such an error vector ``e`` has ``|e|_2 <= sqrt(D) d``.

Retrieval. A score is ``s = <q, k>`` of two reference unit vectors; ours is
``<q + e, k + f>``, so ``|s' - s| <= |<e, k>| + |<q, f>| + |<e, f>| <= 2 sqrt(D) d + D d^2``
(Cauchy-Schwarz). A decision compares two scores: query q hits at k when its best positive
scores above its k-th best negative (order statistics move no more than the scores they are
taken from), so its margin ``m = s_pos - s_neg`` moves by at most twice that:
``4 sqrt(D) d + 2 D d^2``. Both runs rank in fp32, whose dot product of two vectors of norm at
most 1 is off by at most ``g(D) = D u / (1 - D u)`` (``u = 2^-24``; Higham's bound, any summation
order): the reference's own decision already stands within ``2 g(D)`` of the exact margin, ours
within ``4 sqrt(D) d + 2 D d^2 + 2 g(D)`` of it, so the two can differ only where

    |m| < 4 sqrt(D) d + 2 D d^2 + 2 g(D).

Zero-shot. A logit compares an image feature ``x`` with a class vector ``c = m / |m|``, where
``m`` is the mean of the class's T normalised prompt features. Ours differs from the reference's
``m`` by at most ``sqrt(D) d`` (the mean of errors of at most d per component) plus the fp32
rounding of both sums (at most ``g(T)`` each in L2, the summands being unit vectors), and
renormalising divides an error by at most ``|m| / 2`` (``|a/|a| - b/|b|| <= 2 |a - b| / |b|``),
so ``|c' - c|_2 <= eps_c = 2 (sqrt(D) d + 2 g(T)) / mu`` with ``mu`` the smallest ``|m|`` of the
reference's classes (stored with its decisions). One score moves by at most
``sqrt(D) d + eps_c + sqrt(D) d eps_c``; a decision (top-1 against the runner-up, or the true
class against the fifth best other) compares two scores, and the logit scale (x100) and the
softmax the reference ranks by add a few units of rounding:

    |m| < 2 (sqrt(D) d + eps_c + sqrt(D) d eps_c) + 2 g(D) + 8 u.

Margins are in cosine units, computed in float64 from the reference's features.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qaclip_core.errors import QAClipError

if TYPE_CHECKING:
    from qaclip_harness.eval.runner import EvalOutput
    from qaclip_harness.expected import ExpectedCase
    from qaclip_harness.metrics.retrieval import RetrievalResult

FOLDER = "reference-decisions"
UNIT_ROUNDOFF = 2.0**-24  # fp32
HIT, MISS = "hit", "miss"
RANKS = (1, 5, 10)


class DecisionsError(QAClipError):
    """A reference-decisions file that is missing, changed (sha256) or not in the generated shape."""


def gamma(n: int) -> float:
    """Higham's ``n u / (1 - n u)``: the relative error bound of an fp32 sum of ``n`` terms."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def retrieval_bound(dim: int, drift: float) -> float:
    """The smallest retrieval margin a correct run (features within ``drift`` per component) cannot flip."""
    return 4 * math.sqrt(dim) * drift + 2 * dim * drift**2 + 2 * gamma(dim)


def zeroshot_bound(dim: int, drift: float, class_norm: float, templates: int) -> float:
    """The smallest zero-shot margin a correct run cannot flip (``class_norm``: the smallest prompt-mean norm)."""
    feature = math.sqrt(dim) * drift
    eps_c = 2 * (feature + 2 * gamma(templates)) / class_norm
    return 2 * (feature + eps_c + feature * eps_c) + 2 * gamma(dim) + 8 * UNIT_ROUNDOFF


def metric_label(metric: str) -> str:
    """``t2i_r5`` -> ``t2i R@5``, ``top1`` -> ``top-1``."""
    if metric.startswith(("t2i_r", "i2t_r")):
        return f"{metric[:3]} R@{metric[5:]}"
    return metric.replace("top", "top-")


@dataclass(frozen=True)
class ReferenceDecisions:
    """The reference's decisions of one (dataset, model): metric -> item -> (decision, margin)."""

    path: Path
    kind: str  # retrieval | zeroshot
    build: str
    dim: int
    items: dict[str, dict[str, tuple[str, float]]]
    class_norm: float | None = None  # zero-shot: the smallest norm of a class's prompt-feature mean
    templates: int | None = None  # zero-shot: prompts per class

    def bound(self, drift: float) -> float:
        """The near-tie bound of a run whose features may drift by ``drift`` per component."""
        if self.kind == "zeroshot":
            assert self.class_norm is not None and self.templates is not None
            return zeroshot_bound(self.dim, drift, self.class_norm, self.templates)
        return retrieval_bound(self.dim, drift)

    def near_ties(self, bound: float) -> list[tuple[str, str, float]]:
        """(metric, item, margin) of every item whose margin is below ``bound``."""
        return [(m, i, mg) for m, items in self.items.items() for i, (_, mg) in items.items() if mg < bound]

    @property
    def count(self) -> int:
        """How many decisions there are."""
        return sum(len(v) for v in self.items.values())


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_decisions(path: Path, sha256: str | None = None, where: str = "") -> ReferenceDecisions:
    """Read a reference-decisions file; ``sha256``: its pinned digest (a mismatch is an error naming the file)."""
    at = f" (named by {where})" if where else ""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DecisionsError(
            f"{path}{at}: the reference's per-item decisions cannot be read ({e.strerror or e}); "
            "rerun tools/fixture_expected.py"
        ) from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise DecisionsError(
            f"{path}{at}: sha256 {sha256_bytes(data)[:16]}... is not the pinned {sha256[:16]}...: the file changed "
            "since tools/fixture_expected.py wrote it"
        )
    try:
        doc = json.loads(data.decode("utf-8"))
        items = {
            str(metric): {str(item): (str(v[0]), float(v[1])) for item, v in entries.items()}
            for metric, entries in doc["decisions"].items()
        }
        return ReferenceDecisions(
            Path(path),
            str(doc["kind"]),
            str(doc["build"]),
            int(doc["dim"]),
            items,
            float(doc["class_norm_min"]) if doc.get("class_norm_min") is not None else None,
            int(doc["templates"]) if doc.get("templates") is not None else None,
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise DecisionsError(f"{path}{at}: not a reference-decisions file ({type(e).__name__}: {e})") from None


def dumps_decisions(header: Mapping[str, object], items: Mapping[str, Mapping[str, tuple[str, float]]]) -> str:
    """A reference-decisions document as text: the header, then one line per item (diffs read item by item)."""
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "decisions": {')
    metrics = list(items)
    for mi, metric in enumerate(metrics):
        lines.append(f"    {json.dumps(metric)}: {{")
        entries = list(items[metric].items())
        for ei, (item, (decision, margin)) in enumerate(entries):
            comma = "," if ei < len(entries) - 1 else ""
            value = json.dumps([decision, float(f"{margin:.3g}")], ensure_ascii=False)
            lines.append(f"      {json.dumps(item, ensure_ascii=False)}: {value}{comma}")
        lines.append("    }" + ("," if mi < len(metrics) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- our decisions


def retrieval_decisions(result: RetrievalResult, ks: Sequence[int] = RANKS) -> dict[str, dict[str, str]]:
    """Hit or miss of every query at every k, from a :class:`~qaclip_harness.metrics.retrieval.RetrievalResult`."""
    out: dict[str, dict[str, str]] = {}
    for direction, preds, truth, noun in (
        ("t2i", result.t2i, result.text_to_images, "text"),
        ("i2t", result.i2t, result.image_to_texts, "image"),
    ):
        for k in ks:
            out[f"{direction}_r{k}"] = {
                f"{noun} {q}": HIT if set(pred[:k]) & set(truth[q]) else MISS for q, pred in preds.items()
            }
    return out


def zeroshot_decisions(
    logits: object, targets: Sequence[int], names: Sequence[str], classnames: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Predicted class (top-1) and top-5 hit or miss of every image (``names``: its path under the split)."""
    import torch

    scores = torch.as_tensor(logits)
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices.tolist()
    return {
        "top1": {name: classnames[row[0]] for name, row in zip(names, top)},
        "top5": {name: HIT if int(t) in row else MISS for name, row, t in zip(names, top, targets)},
    }


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Flip:
    """One item whose decision is not the reference's."""

    metric: str
    item: str
    reference: str
    ours: str
    margin: float | None  # the reference's margin (None: the item is on one side only)
    excused: bool  # a near-tie at this run's bound

    def describe(self) -> str:
        """``t2i R@5 text 125: reference hit, ours miss (reference margin 2.2e-07)``."""
        margin = "" if self.margin is None else f" (reference margin {self.margin:.1e})"
        return f"{metric_label(self.metric)} {self.item}: reference {self.reference}, ours {self.ours}{margin}"


@dataclass(frozen=True)
class DecisionVerdict:
    """Per item or on totals, and for per item: the bound, the near-ties it excuses and the items that flipped."""

    mode: str  # "per item" or "totals"
    why: str
    bound: float | None = None
    items: int = 0
    near_ties: list[str] = field(default_factory=list)  # "t2i R@5 text 125 (margin 2.2e-07)" at this bound
    flips: list[Flip] = field(default_factory=list)

    @property
    def failed(self) -> list[Flip]:
        """The flips no near-tie excuses (the case fails on them)."""
        return [f for f in self.flips if not f.excused]

    def summary(self) -> str:
        """One line for the report."""
        if self.mode != "per item":
            return f"gate on totals: {self.why}"
        excused = [f for f in self.flips if f.excused]
        near = ", ".join(self.near_ties) if self.near_ties else "none"
        line = (
            f"every decision gated per item ({self.items:,} items against {self.why}); near-ties at this run's "
            f"bound {self.bound:.1e}: {near}"
        )
        if excused:
            line += "; flipped near-ties (excused): " + "; ".join(f.describe() for f in excused)
        if self.failed:
            line += f"; {len(self.failed)} decision(s) differ: " + "; ".join(f.describe() for f in self.failed)
        return line

    def as_dict(self) -> dict[str, object]:
        """For report.json."""
        return {
            "mode": self.mode,
            "why": self.why,
            "bound": self.bound,
            "items": self.items,
            "near_ties": list(self.near_ties),
            "flipped": [
                {
                    "metric": f.metric,
                    "item": f.item,
                    "reference": f.reference,
                    "ours": f.ours,
                    "margin": f.margin,
                    "excused": f.excused,
                }
                for f in self.flips
            ],
            "summary": self.summary(),
        }


def on_totals(why: str) -> DecisionVerdict:
    """The verdict of a case gated on totals only, with the reason."""
    return DecisionVerdict("totals", why)


def compare_decisions(
    reference: ReferenceDecisions, ours: Mapping[str, Mapping[str, str]], bound: float, against: str
) -> DecisionVerdict:
    """Every reference item against ours: a difference is excused only for a near-tie (margin below ``bound``).

    An item on one side only (the data is not the reference's) is a difference that nothing excuses.
    """
    flips: list[Flip] = []
    for metric, items in reference.items.items():
        mine = ours.get(metric, {})
        for item, (decision, margin) in items.items():
            got = mine.get(item, "absent")
            if got != decision:  # a near-tie may flip; an item we did not evaluate is never excused
                flips.append(Flip(metric, item, decision, got, margin, margin < bound and got != "absent"))
        for item in mine:
            if item not in items:
                flips.append(Flip(metric, item, "absent", mine[item], None, False))
    for metric in ours:
        if metric not in reference.items:
            flips.append(Flip(metric, "(every item)", "absent", "measured", None, False))
    near = [f"{metric_label(m)} {i} (margin {mg:.1e})" for m, i, mg in reference.near_ties(bound)]
    return DecisionVerdict("per item", against, bound, reference.count, near, flips)


TOTALS_ONLY = "no per-item reference decisions exist for this dataset (its published numbers are totals)"


def case_verdict(case: ExpectedCase, out: EvalOutput, precision: str, on_cpu: bool) -> DecisionVerdict:
    """The per-item verdict of an evaluated case (``out``: its EvalOutput), or why it is gated on totals.

    ``on_cpu``: the qaclip_core model ran eagerly on the CPU, where ``reference-<model>`` holds its
    features to the measured CPU noise; any other run (a GPU, ONNX, transformers, compile) is
    allowed the parity tolerance, and its near-ties are those at that wider bound.
    """
    from qaclip_harness.gates.tolerances import parity_tolerance, reference_cpu_tolerance

    ref = case.decisions
    if ref is None:
        return on_totals(TOTALS_ONLY)
    if precision != "fp32":
        return on_totals(
            f"the reference's per-item decisions are fp32 ones, and a {precision} run's features drift from them far "
            f"beyond the fp32 bound; a {precision} run is held to its totals within the drift measured for {precision}"
        )
    reference = read_decisions(ref.path, ref.sha256, f"{case.path}: {ref.key}")
    build = out.provenance.get("build")
    if build != reference.build:
        return on_totals(
            f"this data is {f'build {build}' if build else 'of an unknown build'}, not {reference.build}, the build "
            "the reference's per-item decisions were computed on"
        )
    if on_cpu:
        drift, where = reference_cpu_tolerance().max_abs, "the measured CPU noise: the qaclip_core model on the CPU"
    else:
        drift, where = parity_tolerance().max_abs, "the parity tolerance: a run off the CPU"
    raw = out.raw
    if reference.kind == "retrieval":
        ours = retrieval_decisions(raw)  # type: ignore[arg-type]  # a RetrievalResult for a retrieval case
    else:
        assert isinstance(raw, dict)
        ours = zeroshot_decisions(raw["logits"], raw["targets"].tolist(), raw["names"], raw["classnames"])
    against = f"the reference's, build {reference.build}; features within {drift:g}, {where}"
    return compare_decisions(reference, ours, reference.bound(drift), against)
