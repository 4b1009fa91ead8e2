"""The fixture's gate holds every decision, not only the totals: a lost hit plus a gained hit is red, naming both.

Also: the near-tie bound is a bound (a decision is the difference of two scores), the per-item
gate applies only where the reference's decisions exist (elsewhere the report says the gate is on
totals), and the distractor images make a recall that divides by all images red.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from qaclip_harness.expected import load_expected
from qaclip_harness.gates.decisions import (
    HIT,
    MISS,
    DecisionsError,
    case_verdict,
    compare_decisions,
    gamma,
    read_decisions,
    retrieval_bound,
    zeroshot_bound,
)
from qaclip_harness.gates.tolerances import parity_tolerance, reference_cpu_tolerance
from qaclip_harness.report.tables import CaseResult, render_markdown, render_text

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "expected"
RN = "fixture-tiny-rn"


def _cases() -> dict:
    return {c.id: c for c in load_expected(EXPECTED)}


def _reference(case_id: str):
    ref = _cases()[case_id].decisions
    return read_decisions(ref.path, ref.sha256)


# ---------------------------------------------------------------- the bound


def test_a_decision_moves_twice_as_far_as_a_score():
    """A perturbation within d per component moves a margin by up to ~4 sqrt(D) d: the old 2 sqrt(D) d (one score's
    move) is no bound for a decision, the new one is (random and adversarial cases)."""
    dim, d = 64, 1e-5
    rng = np.random.default_rng(0)
    # adversarial: q and the two keys as far apart in L1 as unit vectors get, every error aligned against the margin
    q = np.ones(dim) / math.sqrt(dim)
    a = np.where(np.arange(dim) % 2 == 0, 1.0, -1.0) / math.sqrt(dim)
    b = -a
    moved = abs((q - d * np.sign(a - b)) @ ((a - d * np.sign(q)) - (b + d * np.sign(q))) - q @ (a - b))
    assert moved > 2 * math.sqrt(dim) * d * 1.9  # twice one score's bound, near enough
    assert moved <= retrieval_bound(dim, d) - 2 * gamma(dim)
    worst = 0.0
    for _ in range(2000):
        q, a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(3, dim)))
        e, f, g = rng.choice([-d, d], size=(3, dim))
        worst = max(worst, abs((q + e) @ ((a + f) - (b + g)) - q @ (a - b)))
    assert worst <= retrieval_bound(dim, d)
    # the bounds a run uses: 4.0e-5 on the CPU, 3.3e-4 elsewhere (D = 64); zero-shot wider (class vectors renormalised)
    assert retrieval_bound(dim, reference_cpu_tolerance().max_abs) == pytest.approx(3.963e-5, rel=1e-3)
    assert retrieval_bound(dim, parity_tolerance().max_abs) == pytest.approx(3.276e-4, rel=1e-3)
    assert zeroshot_bound(dim, 1e-5, 0.93, 183) > retrieval_bound(dim, 1e-5)


# ---------------------------------------------------------------- per item against the reference


def _ours(reference) -> dict:
    return {m: {i: d for i, (d, _) in items.items()} for m, items in reference.items.items()}


def _hits(decisions: dict, metric: str) -> int:
    return sum(d == HIT for d in decisions[metric].values())


def test_a_lost_and_a_gained_hit_with_equal_totals_fail_naming_both():
    reference = _reference(f"fixture-shapes-{RN}")
    ours = _ours(reference)
    bound = reference.bound(reference_cpu_tolerance().max_abs)
    items = reference.items["t2i_r1"]
    lost = next(i for i, (d, m) in items.items() if d == HIT and m >= bound)
    gained = next(i for i, (d, m) in items.items() if d == MISS and m >= bound)
    ours["t2i_r1"][lost], ours["t2i_r1"][gained] = MISS, HIT
    assert _hits(ours, "t2i_r1") == _hits(_ours(reference), "t2i_r1")  # the totals cannot tell
    verdict = compare_decisions(reference, ours, bound, "the reference's")
    assert [f.describe().split(" (")[0] for f in verdict.failed] == [
        f"t2i R@1 {lost}: reference hit, ours miss",
        f"t2i R@1 {gained}: reference miss, ours hit",
    ]
    assert "2 decision(s) differ" in verdict.summary()


def test_only_a_near_tie_at_the_runs_bound_may_flip():
    reference = _reference("fixture-shapes-fixture-tiny")
    cpu, off = (reference.bound(d) for d in (reference_cpu_tolerance().max_abs, parity_tolerance().max_abs))
    near_cpu = reference.near_ties(cpu)
    only_off = [n for n in reference.near_ties(off) if n[2] >= cpu]
    assert near_cpu and only_off, "the fixture has near-ties at both bounds"
    for metric, item, _ in (near_cpu[0], only_off[0]):
        ours = _ours(reference)
        ours[metric][item] = MISS if ours[metric][item] == HIT else HIT
        on_cpu, elsewhere = (compare_decisions(reference, ours, b, "") for b in (cpu, off))
        assert not elsewhere.failed and len(elsewhere.flips) == 1 and elsewhere.flips[0].excused
        assert bool(on_cpu.failed) == ((metric, item) == only_off[0][:2])
    # the near-ties are named at the run's bound: off the CPU a list, not a count
    verdict = compare_decisions(reference, _ours(reference), off, "")
    assert len(verdict.near_ties) == len(reference.near_ties(off)) and f"{only_off[0][1]} (margin" in verdict.summary()


def test_zero_shot_gates_the_predicted_class():
    reference = _reference(f"fixture-shapes-cls-{RN}")
    ours = _ours(reference)
    bound = reference.bound(reference_cpu_tolerance().max_abs)
    wrong = next(i for i, (d, m) in reference.items["top1"].items() if m >= bound)
    ours["top1"][wrong] = "星形" if ours["top1"][wrong] != "星形" else "圆形"
    (flip,) = compare_decisions(reference, ours, bound, "").failed
    assert flip.describe().startswith(f"top-1 {wrong}: reference {reference.items['top1'][wrong][0]}, ours ")


def test_an_item_on_one_side_only_is_a_difference():
    reference = _reference(f"fixture-shapes-{RN}")
    ours = _ours(reference)
    gone = next(iter(ours["i2t_r5"]))
    del ours["i2t_r5"][gone]
    ours["i2t_r5"]["image 0"] = HIT
    failed = {f.describe() for f in compare_decisions(reference, ours, 1.0, "").failed}
    assert any(f.startswith(f"i2t R@5 {gone}: reference ") and "ours absent" in f for f in failed)
    assert "i2t R@5 image 0: reference absent, ours hit" in failed


def _out(build: str | None, raw: object = None) -> SimpleNamespace:
    return SimpleNamespace(provenance={"build": build}, raw=raw)


def test_without_per_item_decisions_the_gate_is_on_totals_and_says_why():
    cases = _cases()
    flickr = cases["flickr30k-cn-qa-clip-vit-b-16"]
    assert flickr.decisions is None
    verdict = case_verdict(flickr, _out("hf-zip"), "fp32", on_cpu=False)
    assert verdict.mode == "totals" and "no per-item reference decisions" in verdict.summary()
    fixture = cases[f"fixture-shapes-{RN}"]
    assert "bf16 run is held to its totals" in case_verdict(fixture, _out("generated-seed-0"), "bf16", True).why
    other = case_verdict(fixture, _out(None), "fp32", True)
    assert other.mode == "totals" and "of an unknown build, not generated-seed-0" in other.why
    # the report says so, once for the whole table when every model is gated alike
    rows = [
        CaseResult("flickr30k-cn", m, "passed", decisions=case_verdict(flickr, _out(None), "fp32", True).as_dict())
        for m in ("qa-clip-vit-b-16", "qa-clip-rn50")
    ]
    for text in (render_text(rows), render_markdown(rows)):
        assert text.count("gate on totals: no per-item reference decisions exist for this dataset") == 1
        assert "every model: gate on totals" in text


def test_a_changed_or_missing_decisions_file_is_an_error_naming_it(tmp_path):
    case = _cases()[f"fixture-shapes-{RN}"]
    data = case.decisions.path.read_bytes()
    with pytest.raises(DecisionsError, match=r"no-such\.json \(named by here\): the reference's per-item decisions"):
        read_decisions(tmp_path / "no-such.json", None, "here")
    edited = tmp_path / "edited.json"
    edited.write_bytes(data.replace(b'"hit"', b'"miss"', 1))
    with pytest.raises(DecisionsError, match=r"edited\.json: sha256 .* is not the pinned"):
        read_decisions(edited, case.decisions.sha256)
    broken = tmp_path / "broken.json"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecisionsError, match=r"broken\.json: not a reference-decisions file"):
        read_decisions(broken, hashlib.sha256(data[: len(data) // 2]).hexdigest())


def test_the_expected_files_near_ties_are_the_decision_files():
    """The totals' near-tie allowances and the per-item files name the same items (top-1's totals margin is the true
    class against the best other, never below the predicted class's margin, so its near-ties are a subset)."""
    for name in ("fixture-shapes.yaml", "fixture-shapes-cls.yaml"):
        doc = yaml.safe_load((EXPECTED / name).read_text(encoding="utf-8"))
        for model, entry in doc["models"].items():
            ref = read_decisions(EXPECTED / entry["decisions"]["file"], entry["decisions"]["sha256"])
            near: dict[str, set] = {}
            for metric, item, _ in ref.near_ties(ref.bound(parity_tolerance().max_abs)):
                near.setdefault(metric, set()).add(item)
            listed = {m: {i.split(" (margin")[0] for i in items} for m, items in (entry.get("near_ties") or {}).items()}
            for metric in set(near) | set(listed):
                if metric == "top1":
                    assert listed.get(metric, set()) <= near.get(metric, set()), (name, model)
                else:
                    assert listed.get(metric, set()) == near.get(metric, set()), (name, model, metric)


# ---------------------------------------------------------------- the suite, end to end

PLANT = '''
"""Plant a lost hit and a gained hit at R@1 (text-to-image), leaving every total as it was."""
import os

import qaclip_harness.metrics.retrieval as retrieval

_real = retrieval.evaluate_retrieval
LOST, GAINED = (int(x) for x in os.environ["QACLIP_TEST_PLANT"].split(","))


def planted(*args, **kwargs):
    result = _real(*args, **kwargs)
    truth_lost, truth_gained = set(result.text_to_images[LOST]), set(result.text_to_images[GAINED])
    lost, gained = result.t2i[LOST], result.t2i[GAINED]
    assert lost[0] in truth_lost and gained[0] not in truth_gained and set(gained[:5]) & truth_gained
    wrong = next(i for i in gained if i not in truth_lost)  # its right image drops to rank 2: R@5, R@10 unchanged
    result.t2i[LOST] = [wrong] + [i for i in lost if i != wrong][:9]
    right = next(i for i in gained if i in truth_gained)  # rises from rank 2-5 to 1: R@5, R@10 unchanged
    result.t2i[GAINED] = [right] + [i for i in gained if i != right][:9]
    return result


retrieval.evaluate_retrieval = planted
'''

MUTATE = '''
"""A regression: image-to-text recall divided by every image, not by the images some caption describes."""
from pathlib import Path

import qaclip_harness.metrics.retrieval as retrieval

source = Path(retrieval.__file__).read_text(encoding="utf-8")
old = "i2t_counts[r] * 1.0 / len(query_ids)"
assert source.count(old) == 1, "the mutation no longer applies"
exec(compile(source.replace(old, "i2t_counts[r] * 1.0 / len(image_ids)"), retrieval.__file__, "exec"), retrieval.__dict__)
'''


def _suite_with(tmp_path: Path, plugin: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "qaclip_test_plugin.py").write_text(plugin, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-m",
            "not throughput",
            "-k",
            f"fixture-shapes-{RN}",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "qaclip_test_plugin",
            "--no-cache",
            "--report",
            str(tmp_path / "report"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path), **env},
        timeout=600,
        check=False,
    )


def test_suite_goes_red_naming_a_planted_lost_and_gained_hit(tmp_path):
    reference = _reference(f"fixture-shapes-{RN}")
    r1, r5 = reference.items["t2i_r1"], reference.items["t2i_r5"]
    lost = next(i for i, (d, _) in r1.items() if d == HIT)
    gained = next(i for i, (d, _) in r1.items() if d == MISS and r5[i][0] == HIT)
    out = _suite_with(tmp_path, PLANT, {"QACLIP_TEST_PLANT": f"{lost.split()[1]},{gained.split()[1]}"})
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert f"fixture-shapes-{RN} (fp32): every total is within tolerance, but decisions differ" in text
    assert f"t2i R@1 {lost}: reference hit, ours miss" in text and f"t2i R@1 {gained}: reference miss, ours hit" in text
    assert "1 failed" in text
    # docs/offline-gate.md shows this very output
    doc = (REPO / "docs" / "offline-gate.md").read_text(encoding="utf-8")
    sample = doc.split("<!-- planted-swap -->\n```\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(sample) == 4 and all(line in text.splitlines() for line in sample), sample
    (res,) = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["results"]
    assert res["status"] == "failed" and all(c["ok"] for c in res["checks"])  # red on the items, not on a total
    assert {(f["item"], f["reference"], f["ours"]) for f in res["decisions"]["flipped"]} == {
        (lost, "hit", "miss"),
        (gained, "miss", "hit"),
    }


def test_suite_goes_red_when_image_to_text_recall_divides_by_every_image(tmp_path):
    """With images no caption describes (60 of the fixture's 180), dividing by all images is no longer the same."""
    out = _suite_with(tmp_path, MUTATE, {})
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"fixture-shapes-{RN} (fp32) is outside tolerance" in out.stdout
    (res,) = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["results"]
    checks = {c["metric"]: c for c in res["checks"]}
    assert checks["i2t_r1"]["measured"] == pytest.approx(100 * 120 / 180) and not checks["i2t_r1"]["ok"]
    assert all(checks[m]["ok"] for m in ("t2i_r1", "t2i_r5", "t2i_r10"))
