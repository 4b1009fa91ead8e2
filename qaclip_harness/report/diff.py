"""Two reports side by side: per case and metric both values and their delta, and every provenance field that differs.

``python -m qaclip_harness compare-reports A/report.json B/report.json`` answers "why do these runs
disagree?" at a glance: a different data build, torch version, TF32 setting, precision or
checkpoint shows up as a differing field beside the metric deltas.
"""

from __future__ import annotations

import json
from pathlib import Path

from qaclip_core.errors import QAClipError
from qaclip_harness.documents import key_text, read_json

# per-case fields compared besides the metrics (provenance keys are flattened with dots)
CASE_FIELDS = ("status", "precision", "device", "checkpoint_sha256", "data_fingerprint", "gate")
SKIP_PROVENANCE = ("folder", "label_file", "origin.unpacked")  # where a copy sits, when it was unpacked: not what it is


SCHEMA = Path(__file__).with_name("report.schema.json")


class ReportError(QAClipError, ValueError):
    """A file given as a report that is not one: the message names the file and the key."""


def _where(path_parts) -> str:
    out = ""
    for part in path_parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{key_text(part)}" if out else key_text(part))
    return out or "the top level"


def validate_report(doc: object, path: str | Path) -> None:
    """Check ``doc`` against the report's JSON Schema (``report.schema.json``); ReportError naming file and key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        raise ReportError(
            f"{path} is not a qaclip report.json: {_where(error.absolute_path)}: {message} (the schema is {SCHEMA.name})"
        )


def load_report(path: str | Path) -> dict:
    """A report.json (or the folder holding one), validated against its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    doc = read_json(path, ReportError)  # strict: a duplicate key, deep nesting, a bad byte: one error naming it
    validate_report(doc, path)
    return doc


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Nested mappings as one mapping of dotted keys (``a.b.c``) to their leaf values."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _cases(doc: dict) -> dict[tuple[str, str], dict]:
    return {(r["dataset"], r["model"]): r for r in doc["results"]}


def _case_fields(r: dict) -> dict[str, object]:
    fields = {k: r.get(k) for k in CASE_FIELDS}
    prov = flatten(r.get("provenance") or {}, "provenance")
    fields.update(
        {
            k: v
            for k, v in prov.items()
            if not any(k.endswith(s) for s in SKIP_PROVENANCE) and "fingerprint_parts" not in k
        }
    )
    return fields


def compare(a: dict, b: dict) -> dict:
    """The differences between reports ``a`` and ``b`` as data (what :func:`render` prints)."""
    env = {k: (v, flatten(b.get("environment") or {}).get(k)) for k, v in flatten(a.get("environment") or {}).items()}
    env.update({k: (None, v) for k, v in flatten(b.get("environment") or {}).items() if k not in env})
    meta = {
        k: (a.get("meta", {}).get(k), b.get("meta", {}).get(k))
        for k in set(a.get("meta") or {}) | set(b.get("meta") or {})
        if k != "time"
    }
    ca, cb = _cases(a), _cases(b)
    cases: list[dict[str, object]] = []
    for key in sorted(set(ca) | set(cb)):
        ra, rb = ca.get(key), cb.get(key)
        if ra is None or rb is None:
            cases.append({"case": key, "only_in": "A" if rb is None else "B"})
            continue
        ma, mb = ra.get("measured") or {}, rb.get("measured") or {}
        metrics = [(m, ma.get(m), mb.get(m)) for m in list(dict.fromkeys([*ma, *mb]))]
        fa, fb = _case_fields(ra), _case_fields(rb)
        fields = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
        cases.append({"case": key, "metrics": metrics, "fields": fields})
    return {
        "environment": {k: v for k, v in env.items() if v[0] != v[1]},
        "meta": {k: v for k, v in meta.items() if v[0] != v[1]},
        "cases": cases,
    }


def render(diff: dict, a_name: str = "A", b_name: str = "B") -> str:
    """Plain-text comparison: run-level differences, then per case the metric table and differing fields."""
    lines: list[str] = [f"A = {a_name}", f"B = {b_name}", ""]
    run = {**diff["meta"], **diff["environment"]}
    lines.append("run settings that differ:" if run else "run settings: identical")
    lines.extend(f"  {k}: {va!r} -> {vb!r}" for k, (va, vb) in sorted(run.items()))
    for c in diff["cases"]:
        dataset, model = c["case"]
        lines.append("")
        if "only_in" in c:
            lines.append(f"{dataset} / {model}: only in {c['only_in']}")
            continue
        lines.append(f"{dataset} / {model}")
        if c["metrics"]:
            lines.append(f"  {'metric':<18}{'A':>10}{'B':>10}{'B - A':>9}")
            for m, va, vb in c["metrics"]:
                fa = f"{va:.2f}" if isinstance(va, (int, float)) else "-"
                fb = f"{vb:.2f}" if isinstance(vb, (int, float)) else "-"
                d = f"{vb - va:+.2f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
                lines.append(f"  {m:<18}{fa:>10}{fb:>10}{d:>9}")
        for k, (va, vb) in c["fields"].items():
            lines.append(f"  {k}: {va!r} -> {vb!r}")
    return "\n".join(lines)
