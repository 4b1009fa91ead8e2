"""Every string read from a report, a card, an expected file, a cache record or a path is escaped for the place it
lands: HTML text and attributes (report.html), Markdown table cells, list items and code blocks (report.md,
history.md, the job summary) and the terminal. A hostile run (tests/hostile.py: markup in every field the page
shows) is drawn into every output, and nothing of it acts: no element, attribute, link or script of its own, in
the page's source and in a headless Chromium's DOM, and the hostile text is shown as text."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qaclip_harness.cli.commands import main
from qaclip_harness.report.escape import css_class, html_text, json_text, markdown_fence, markdown_inline, terminal
from qaclip_harness.report.tables import CaseResult, write_reports
from qaclip_harness.suite.options import env_flag
from tests.hostile import HOSTILE, PWNED, hostile_report, markdown_problems, markup_problems

from .test_report_html import _browser


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory) -> Path:
    """Two hostile runs of one store, the second with other numbers (so numbers move and statuses change)."""
    root = tmp_path_factory.mktemp("hostile")
    hostile_report(root / "store" / "a", time="2026-05-01T00:00:00")
    run = hostile_report(root / "b", time="2026-05-02T00:00:00")
    doc = json.loads((run / "report.json").read_text(encoding="utf-8"))
    for r in doc["results"]:
        for c in r["checks"]:
            c["measured"] += 0.25
    doc["results"][0]["status"] = "failed"
    (run / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    second = run / "predictions" / next(p.name for p in (run / "predictions").iterdir())
    (second / "test_predictions.jsonl").write_text('{"text_id": 1, "image_ids": [2, 1]}\n', encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def outputs(hostile_runs, tmp_path_factory) -> dict[str, str]:
    """The page, history.md and the terminal table of `qaclip history` over the hostile runs, and report.md."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("out")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(
            [
                "history",
                str(hostile_runs / "store"),
                str(hostile_runs / "b"),
                "--html",
                str(out / "page.html"),
                "--markdown",
                str(out / "history.md"),
            ]
        )
    assert code == 0
    doc = json.loads((hostile_runs / "b" / "report.json").read_text(encoding="utf-8"))
    results = [
        CaseResult(**{k: v for k, v in r.items() if k in CaseResult.__dataclass_fields__}) for r in doc["results"]
    ]
    write_reports(results, out / "report", meta=doc["meta"], environment=doc["environment"])
    return {
        "page": (out / "page.html").read_text(encoding="utf-8"),
        "history.md": (out / "history.md").read_text(encoding="utf-8"),
        "report.md": (out / "report" / "report.md").read_text(encoding="utf-8"),
        "terminal": buf.getvalue(),
    }


def test_the_page_holds_no_markup_from_the_report(outputs):
    assert markup_problems(outputs["page"]) == []
    for payload in ("<script>", "onerror=", "onmouseover=", "javascript:alert"):  # shown, as text
        assert payload in _text_of(outputs["page"])


def test_every_hostile_string_is_shown_whole_in_the_page(hostile_runs, outputs):
    """Each field's text is on the page, escaped, not cut or dropped (statuses, reasons, names, provenance...)."""
    text = _text_of(outputs["page"])
    doc = json.loads((hostile_runs / "b" / "report.json").read_text(encoding="utf-8"))
    shown = [r["status"] for r in doc["results"]] + [r["reason"] for r in doc["results"]]
    shown += [r["model"] for r in doc["results"]] + [r["dataset"] for r in doc["results"][:-1]]
    for s in shown:
        assert _visible(s) in text, s[:60]


def _visible(s: str) -> str:
    """``s`` as the page shows it: lone surrogates and control characters as U+FFFD."""
    return _scrubbed(s).replace("\r\n", "\n").replace("\r", "\n")  # as _text_of reads line ends


def _scrubbed(s: str) -> str:
    return re.sub("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "\ufffd", s)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _text_of(page: str) -> str:
    p = _Text()
    p.feed(page)
    return "".join(p.parts).replace("\r\n", "\n").replace("\r", "\n")


def _markdown_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").render(text)


@pytest.mark.parametrize("name", ["history.md", "report.md"])
def test_markdown_holds_no_markup_from_the_report(outputs, name):
    """Rendered as CommonMark with tables (raw HTML on, as a job summary takes it): only our own elements, every
    table row as wide as its header (no cell split by a '|'), no heading from a name, the hostile text shown."""
    text = outputs[name]
    assert markdown_problems(text) == []
    headings = re.findall(r"^(#+) ", text, flags=re.M)
    assert all(h in ("#", "##") for h in headings)
    assert sum(line.startswith("#") for line in text.splitlines()) == len(headings)  # no heading from a name


def test_the_terminal_gets_no_control_sequence(outputs):
    text = outputs["terminal"]
    assert "\x1b" not in text and "\r" not in text and "\x9b" not in text and "\x07" not in text
    assert "\\x1b[31m" in text or "\\x1b" in text  # shown escaped


def test_history_json_escapes_what_a_terminal_would_obey(hostile_runs, capsys):
    assert main(["history", str(hostile_runs / "store"), str(hostile_runs / "b"), "--json"]) == 0
    out = capsys.readouterr().out
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", out)
    assert json.loads(out)["moved"]  # still the same JSON


@pytest.mark.parametrize(
    "text",
    [*HOSTILE, "a_b _c_ *d* `e` [f](g) <h> &i; | j \\ k ~~l~~", "\u2028x\u2029", "```"],
)
def test_escapers_round_trip(text):
    """What each escaper makes of a string reads back as the string (in its place), holding no markup."""
    import html as html_module

    assert html_module.unescape(html_text(text)) == _scrubbed(text)
    assert "<" not in html_text(text) and '"' not in html_text(text) and "'" not in html_text(text)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", css_class(text))
    cell = markdown_inline(text)
    assert "\n" not in cell and "\r" not in cell and not re.search(r"(?<!\\)\|", cell)
    rendered = _markdown_html(f"| x |\n|---|\n| {cell} |\n")
    assert rendered.count("<td>") == 1 and "<a " not in rendered and "<em>" not in rendered
    fenced = _markdown_html("\n".join(markdown_fence([text, "after"])) + "\nout\n")
    assert "<p>out</p>" in fenced  # the fence was not closed early
    assert "\x1b" not in terminal(text) and "\r" not in terminal(text)
    assert json.loads(json_text({"k": text})) == {"k": text}


def test_a_dollar_sign_in_a_name_is_drawn_not_parsed_as_math(tmp_path):
    """matplotlib reads '$...$' as math and fails on bad math: names are drawn as text."""
    pytest.importorskip("matplotlib", reason="the report extra is not installed")
    from qaclip_harness.report import plots

    svg = plots.tolerance_plot("$\\frac{$ title", [("$\\frac{$ model", "$x_$", 0.5, True)])
    assert svg.startswith("<svg")


def test_the_headless_browser_runs_nothing_from_the_report(outputs, tmp_path):
    """Chromium loads the hostile page: no payload ran (it would mark the document), no console message."""
    exe = _browser()
    if not exe:
        why = "needs a headless Chromium (apt-get install -y chromium, or QACLIP_BROWSER)"
        if env_flag("QACLIP_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    page = tmp_path / "page.html"
    page.write_text(outputs["page"], encoding="utf-8")
    out = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "<h1>Reproduction report</h1>" in out.stdout
    assert PWNED not in out.stdout.split("<body", 1)[0] and f"{PWNED}=" not in out.stdout
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert markup_problems(out.stdout) == []  # the DOM the browser built holds nothing active either
