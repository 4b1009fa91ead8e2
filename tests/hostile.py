"""Hostile strings in every field a report page or summary shows, and a check that none of them became markup.

Used by tests/harness/test_report_escaping.py (the page, report.md, history.md, the job summary, the
terminal, and a headless Chromium) and by tools/bad_inputs.py (``qaclip history --html`` on such a run).
A run folder made here is what a hostile pull request could leave in a history store: a report.json that
passes the schema, a pytest-benchmark file, and a predictions folder, each string field carrying markup.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

PWNED = "data-pwned"  # what the payloads would set on the page if any of them ran
HOSTILE = (
    f"\"><script>document.documentElement.setAttribute('{PWNED}','script')</script>",
    f"<img src=x onerror=\"document.documentElement.setAttribute('{PWNED}','img')\">",
    f"' onmouseover='document.documentElement.setAttribute(\"{PWNED}\",\"attr\")' x='",
    "</pre></td></table><svg onload=alert(1)><a href=javascript:alert(1)>x</a>",
    "| cell | split |\n# heading\n<details open>",
    "[link](javascript:alert(1)) ![img](https://example.com/t.png) `code` *em* _em_ ~~s~~ &amp; <b>b</b>",
    "--> <!-- $\\frac{$ $x_$ \x1b[31mred\x1b[0m \r overwrite \x07 \x9b2J",
    "lone \ud800 surrogate \u2028 separator \x00 nul",
)


def hostile(i: int) -> str:
    """The ``i``-th hostile string (cycling), tagged with ``i`` so that two fields never hold the same text."""
    return f"{HOSTILE[i % len(HOSTILE)]} #{i}"


def hostile_report(folder: Path, time: str = "2026-05-01T00:00:00") -> Path:
    """A run folder whose report.json (schema-valid), benchmark JSON and predictions folder are hostile everywhere."""
    n = iter(range(10**6))
    h = lambda: hostile(next(n))  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for status in ("passed", "failed", "skipped", "error", "reported", h()):
        metric = h()
        results.append(
            {
                "dataset": h(),
                "model": h(),
                "status": status,
                "kind": "retrieval" if status != "reported" else h(),
                "precision": h(),
                "device": h(),
                "reason": h(),
                "backend": h(),
                "variant": h(),
                "gate": h(),
                "gate_reason": h(),
                "checkpoint_sha256": h(),
                "data_fingerprint": h(),
                "checks": [
                    {"metric": metric, "measured": 50.0, "expected": 49.0, "delta": 1.0, "tolerance": 0.5, "ok": False},
                    {"metric": "t2i_r1", "measured": 9.5, "expected": 9.5, "delta": 0.0, "tolerance": 0.5, "ok": True},
                ],
                "measured": {metric: 50.0, h(): 1.0},
                "counts": {h(): 3},
                "sources": {h(): {metric: {"expected": 49.0, "delta": 1.0}}},
                "provenance": {h(): h(), "build": h(), "counts": {h(): 2}, "split_check": {"ok": False, "cause": h()}},
                "features": {
                    "status": h(),
                    "cache": h(),
                    "steps": {h(): {"status": "reused", "key": h(), "run": h(), "date": h()}},
                },
                "decisions": {"summary": h(), "flipped": [h()]},
            }
        )
    results.append(  # a dataset of the ELEVATER grid: its own table, cells and notes
        {
            "dataset": "cifar-10",
            "model": h(),
            "status": h(),
            "kind": "zeroshot",
            "reason": h(),
            "checks": [
                {"metric": "top1", "measured": 50.0, "expected": 49.0, "delta": 1.0, "tolerance": 0.5, "ok": False}
            ],
            "provenance": {"build": h()},
        }
    )
    doc = {
        "meta": {"time": time, "device": h(), "precision": h(), "backend": h(), h(): h()},
        "environment": {"git": {"commit": h(), "dirty": True}, "torch": h(), h(): {h(): h()}},
        "results": results,
    }
    (folder / "report.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    bench = {
        "machine_info": {"node": h()},
        "commit_info": {"id": h()},
        "datetime": time,
        "benchmarks": [
            {
                "group": h(),
                "name": h(),
                "fullname": h(),
                "stats": {"mean": 0.01},
                "extra_info": {"impl": impl, "items_per_s": 100.0 + i},
            }
            for i, impl in enumerate(("qaclip_core", "cn_clip", h()))
        ],
    }
    (folder / "benchmark.json").write_text(json.dumps(bench), encoding="utf-8")
    preds = folder / "predictions" / "<i>case `x` ``` \x1b[1m"
    preds.mkdir(parents=True)
    (preds / "test_texts.tr.jsonl").write_text('{"image_id": 1, "text_ids": [1]}\n', encoding="utf-8")
    (preds / "test_predictions.jsonl").write_text('{"text_id": 1, "image_ids": [1, 2]}\n', encoding="utf-8")
    return folder


class _Markup(HTMLParser):
    """Collects what would act in a browser: elements, event handlers, links, sources."""

    ACTIVE: ClassVar[frozenset[str]] = frozenset(
        {"script", "iframe", "object", "embed", "img", "image", "foreignobject", "link", "base", "form", "input"}
        | {"button", "audio", "video", "source", "track", "frame", "frameset", "applet", "animate", "set", "meta"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.metas = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "meta":
            self.metas += 1
            if self.metas <= 2:  # the page's own charset and viewport
                return
        if tag in self.ACTIVE:
            self.problems.append(f"<{tag}> element")
        for name, raw in attrs:
            value = raw or ""
            if name.startswith("on"):
                self.problems.append(f"{name}= on <{tag}>")
            if name in ("href", "xlink:href", "src", "action", "formaction") and not value.startswith("#"):
                self.problems.append(f"{name}={value[:40]!r} on <{tag}>")
            if name == "class" and not all(c.isalnum() or c in " -_" for c in value):
                self.problems.append(f"class={value[:40]!r} on <{tag}>")
            if name == "style" and "url(" in value:
                self.problems.append(f"style with url() on <{tag}>")
            if name == PWNED:
                self.problems.append(f"{PWNED} on <{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def markup_problems(page: str) -> list[str]:
    """What in ``page`` could act in a browser (scripts, handlers, outside links); empty for a safe page."""
    parser = _Markup()
    parser.feed(page)
    parser.close()
    problems = list(parser.problems)
    shown = "".join(parser.text)
    if "<script>document.documentElement" not in shown:  # the hostile text is shown as text, not dropped
        problems.append("the hostile text is not shown as text")
    return problems


MARKDOWN_TAGS = frozenset({"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "strong", "pre"})


def markdown_problems(text: str, expect: str = "<script>document.documentElement") -> list[str]:
    """What in Markdown ``text`` (rendered as CommonMark with tables, raw HTML on, as GitHub takes a job summary)
    is an element other than the report's own (headings, tables, lists, bold, one code block), or a table row
    wider or narrower than its header; and whether ``expect`` is shown as text."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").render(text)

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.problems: list[str] = []
            self.stack: list[str] = []
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "code" and self.stack[-1:] == ["pre"]:
                pass  # the code block of the rank changes
            elif tag not in MARKDOWN_TAGS:
                self.problems.append(f"<{tag}> element")
            if attrs:
                self.problems.append(f"attributes {attrs!r:.60} on <{tag}>")
            self.stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if tag in self.stack:
                del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag) :]

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    tags = Tags()
    tags.feed(rendered)
    problems = tags.problems
    for table in rendered.split("<table>")[1:]:
        widths = {row.count("<td") + row.count("<th") for row in table.split("</table>")[0].split("<tr>")[1:]}
        if len(widths) > 1:
            problems.append(f"a table whose rows have {sorted(widths)} cells")
    if expect and expect not in "".join(tags.text):
        problems.append(f"{expect!r} is not shown as text")
    return problems
