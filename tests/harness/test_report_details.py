"""The report's extra lines for report-only rows (the steps a protocol does differently) and parity rows."""

from __future__ import annotations

from qaclip_harness.report.tables import CaseResult, render_markdown, render_text


def _rows():
    check = {"metric": "top1", "measured": 49.1, "expected": 49.7, "tolerance": 0.1, "delta": -0.6, "ok": False}
    reported = CaseResult(
        dataset="imagenet",
        model="hf-qa-clip-vit-b-16-processor",
        kind="zeroshot",
        status="reported",
        checks=[check],
        reason="ChineseCLIPProcessor as users call it; differs from the reference "
        "protocol in: centre crop to 224x224; no folding of curly quotes",
    )
    parity = CaseResult(
        dataset="parity-hf",
        model="qa-clip-vit-b-16",
        kind="parity",
        status="passed",
        checks=[
            {
                "metric": "image_max_abs_diff",
                "measured": 1.9e-7,
                "expected": 0.0,
                "tolerance": 1e-5,
                "delta": 1.9e-7,
                "ok": True,
            }
        ],
    )
    return [reported, parity]


def test_report_only_rows_carry_their_differences():
    text, md = render_text(_rows()), render_markdown(_rows())
    for out in (text, md):
        assert "reported, not gated: ChineseCLIPProcessor as users call it" in out
        assert (
            "hf-qa-clip-vit-b-16-processor: differs from the reference protocol in: centre crop to 224x224; no folding"
            in out
        )
        assert "49.1 (-0.6)!" in out


def test_parity_rows_show_feature_differences_not_points():
    text = render_text(_rows())
    assert "1.9e-07" in text and "img max|d|" in text and "(+" not in text.split("img max|d|")[1]


def test_plugin_adds_the_encoder_differences_to_a_report_only_reason():
    from types import SimpleNamespace

    from qaclip_harness.suite.results import report_reason as _report_reason

    enc = SimpleNamespace(differences=["centre crop to 224x224", "no lower-casing"])
    assert (
        _report_reason("why", enc)
        == "why; differs from the reference protocol in: centre crop to 224x224; no lower-casing"
    )
    assert _report_reason(None, enc) is None  # a gated case stays gated
    assert _report_reason("why", SimpleNamespace()) == "why"


def test_a_report_written_outside_a_git_checkout_reads_back(tmp_path, monkeypatch):
    """A run from an installed package or a copied tree has no commit: its report.json must still load."""
    from qaclip_harness import environment as env_module
    from qaclip_harness.report.diff import load_report
    from qaclip_harness.report.tables import write_reports

    monkeypatch.setattr(env_module, "git_commit", lambda *a, **k: None)
    env = env_module.environment("cpu")
    assert env["git"] is None
    rows = [
        CaseResult(dataset="fixture-shapes", model="fixture-tiny", status="passed"),
        CaseResult("d", "m", "skipped"),
    ]
    write_reports(rows, tmp_path, {"precision": "fp32"}, environment=env)
    doc = load_report(tmp_path)
    assert doc["environment"]["git"] is None and [r["status"] for r in doc["results"]] == ["passed", "skipped"]
