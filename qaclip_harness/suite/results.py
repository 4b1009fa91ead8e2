"""What a finished case leaves behind: its failure message, its JUnit properties, its report fields."""

from __future__ import annotations

from qaclip_harness.expected import ExpectedCase
from qaclip_harness.gates.decisions import Flip
from qaclip_harness.report.tables import CaseResult, failure_table


def case_provenance(data: dict) -> dict:
    """The data provenance a report keeps per case (the folder and fingerprint parts included)."""
    return {k: v for k, v in data.items() if k not in ("data_fingerprint", "features")}


def features_summary(steps: dict | None, mode: str) -> dict:
    """What the report says of a case's features: per step computed or reused (run, date, key), and the cache mode."""
    steps = dict(steps or {})
    # a step resumed from an interrupted run's chunks was computed here only in part
    statuses = {"resumed" if s.get("resumed") else s.get("status") for s in steps.values()}
    status = "reused" if statuses == {"reused"} else "computed" if statuses <= {"computed"} else "partly reused"
    return {"status": status, "cache": mode, "steps": steps}


def failure_message(case: ExpectedCase, result: CaseResult, checks, precision: str) -> str:
    """Why a case failed: the table against the gate, the data it ran on, and the sources it does match."""
    flipped = [f for f in result.decisions.get("flipped") or [] if not f.get("excused")]
    outside = any(not c.ok for c in checks)
    if outside or not flipped:
        lines = [
            f"{case.id} ({precision}) is outside tolerance (gate: {result.gate}; {result.gate_reason}):",
            failure_table(checks),
        ]
    else:
        lines = [f"{case.id} ({precision}): every total is within tolerance, but decisions differ from the reference's"]
    if flipped:
        lines.append(
            f"{len(flipped)} decision(s) differ from the reference's (per-item gate; near-ties below "
            f"{result.decisions.get('bound'):.1e} excused):"
        )
        lines += [f"  {describe_flip(f)}" for f in flipped]
    prov = result.provenance or {}
    lines.append(
        f"data: {prov.get('folder')} (fingerprint {str(result.data_fingerprint)[:16]}..., build "
        f"{prov.get('build') or 'unknown'}, {', '.join(f'{v:,} {k}' for k, v in (prov.get('counts') or {}).items())})"
    )
    matching = []
    for src, deltas in result.sources.items():
        if src == result.gate or not deltas:
            continue
        worst = max(abs(d["delta"]) for d in deltas.values())
        tol = min(c.tolerance for c in checks) if checks else 0.0
        if worst <= tol + 1e-9:
            build = case.sources[src].build
            matching.append(f"{src} (measured on build {build or 'unstated'}; largest |delta| {worst:.2f})")
    if matching:
        lines.append(
            "within tolerance of another source: "
            + "; ".join(matching)
            + ": the data may be that source's build, or the model matches that measurement"
        )
    return "\n".join(lines)


def describe_flip(row: dict) -> str:
    """One flipped item of report.json's ``decisions.flipped``, in words (query, k, the reference's decision and ours)."""
    return Flip(row["metric"], row["item"], row["reference"], row["ours"], row.get("margin"), False).describe()


def recorded_notes(case: ExpectedCase, checkpoint_sha256: str | None, data_fingerprint: str | None) -> list[str]:
    """For numbers written by ``qaclip record``: whether this run's checkpoint and data are the ones they were recorded on."""
    rec = case.recorded
    if not rec:
        return []
    notes = []
    was = (rec.get("checkpoint") or {}).get("sha256")
    if was and checkpoint_sha256 and was != checkpoint_sha256:
        notes.append(
            f"the checkpoint is not the one these numbers were recorded from (sha256 {was[:12]}..., now "
            f"{checkpoint_sha256[:12]}...)"
        )
    was = (rec.get("data") or {}).get("fingerprint")
    if was and data_fingerprint and was != data_fingerprint:
        notes.append(
            f"the data is not the data these numbers were recorded on (fingerprint {was[:12]}..., now "
            f"{data_fingerprint[:12]}...)"
        )
    return notes


def junit_properties(result: CaseResult) -> list[tuple[str, object]]:
    """(name, value) pairs for JUnit XML: the case's status, and per metric its four numbers."""
    props: list[tuple[str, object]] = [("qaclip.status", result.status), ("qaclip.precision", result.precision)]
    if result.reason:
        props.append(("qaclip.reason", result.reason))
    for name in ("gate", "checkpoint_sha256", "data_fingerprint"):
        if getattr(result, name):
            props.append((f"qaclip.{name}", getattr(result, name)))
    if result.decisions.get("summary"):
        props.append(("qaclip.decisions", result.decisions["summary"]))
    for c in result.checks:
        for field in ("measured", "expected", "delta", "tolerance"):
            if c.get(field) is not None:  # checkpoint gates hold some rows against nothing published
                # six significant digits, not decimals: an exact gate's 1e-6 tolerance must not read as 0; + 0.0: no "-0.0"
                props.append((f"{c['metric']}.{field}", float(f"{float(c[field]):.6g}") + 0.0))
    return props


def report_reason(reason: str | None, encoder) -> str | None:
    """A report-only case's reason, with the preprocessing steps its encoder does differently (if it lists them)."""
    differences = getattr(encoder, "differences", None)
    if reason is None or not differences:
        return reason
    return f"{reason}; differs from the reference protocol in: " + "; ".join(differences)


def skip_reason(report) -> str:
    """The one-line reason of a skipped test report."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ").splitlines()[0] if text else "skipped"


def error_reason(call) -> str:
    """``Type: first line`` of the exception a test call raised."""
    exc = call.excinfo.value if call.excinfo is not None else None
    if exc is None:
        return "error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
