"""Text from reports, cards, expected files, cache records and paths, made safe for the place it lands.

Every string a page or a summary shows may come from a file someone else wrote (a pull request's
report.json, a card, a cache record, a folder name): it is escaped where it is put, for that
place. Lone surrogates (valid in JSON's ``\\ud800`` escapes, not encodable as UTF-8) become
U+FFFD everywhere, so that writing the page never fails on them.
"""

from __future__ import annotations

import html
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls and DEL: a page shows them as nothing (or U+FFFD), a terminal obeys some of them
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("[\r\n\t\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")
# CommonMark lets a backslash escape any ASCII punctuation; these start inline markup in a table cell or
# a list item: code, emphasis, strike-through, links and images, raw HTML and autolinks, entities, cells.
# An underscore inside a word (t2i_r1, QACLIP_CACHE) starts nothing in GitHub's Markdown and stays as it is.
_MARKDOWN = re.compile(r"([\\`*~\[\]<>&|]|(?<!\w)_|_(?!\w))")
_CLASS = re.compile(r"[^A-Za-z0-9_-]+")
_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and line feed: \r rewrites a line


def number_text(value: object, spec: str) -> str:
    """``value`` formatted by ``spec`` when it is a number (a report read back may hold null where one was), else
    as text ('-' for null): formatting a value read from a file never fails."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return format(value, spec)
        except ValueError:  # a spec that does not fit the value (an integer with 'e' is fine, '%' on...)
            return repr(value)
    return "-" if value is None else str(value)


def scrub(text: object) -> str:
    """``str(text)`` with lone surrogates replaced by U+FFFD (the only characters UTF-8 cannot encode)."""
    return _SURROGATE.sub("\ufffd", str(text))


def html_text(text: object) -> str:
    """For HTML text content and quoted attribute values: ``& < > " '`` as entities, controls as U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", scrub(text)), quote=True)


def css_class(text: object) -> str:
    """One class name for a ``class`` attribute: anything but letters, digits, ``-`` and ``_`` becomes ``-``."""
    return _CLASS.sub("-", scrub(text)).strip("-") or "unknown"


def markdown_inline(text: object) -> str:
    """For a Markdown table cell, list item or heading: one line, every character that starts markup escaped."""
    one_line = _LINE_BREAKS.sub(" ", scrub(text))
    return _MARKDOWN.sub(r"\\\1", _CONTROL.sub("\ufffd", one_line))


_NUMBER_CELL = re.compile(r"[0-9eE.,+\-() %x]*[!*]?")


def markdown_cell(text: object) -> str:
    """For a table cell that may hold a formatted number with its flag (``16.5 (-17.0)*``): left as it is, since
    one ``*`` alone in a cell (each cell is its own inline text) starts nothing; any other text as
    :func:`markdown_inline`."""
    text = str(text)
    return text if _NUMBER_CELL.fullmatch(text) else markdown_inline(text)


def markdown_fence(lines: list[str]) -> list[str]:
    """``lines`` as a fenced code block whose fence is longer than any run of backticks inside (so none closes it)."""
    body = [_CONTROL.sub("\ufffd", _LINE_BREAKS.sub(" ", scrub(line))) for line in lines]
    longest = max((len(m) for line in body for m in re.findall("`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *body, fence]


def terminal(text: object) -> str:
    """For a terminal: lines and tabs kept, every other control character (escape sequences) shown as ``\\xNN``."""
    return _TERMINAL.sub(lambda m: f"\\x{ord(m.group()):02x}", scrub(text))


_JSON_UNSAFE = re.compile("[\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def json_text(obj: object, **dumps: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False)`` safe to print: C1 controls, lone surrogates and line separators as
    ``\\uXXXX`` escapes (the same JSON value; json.dumps escapes the C0 controls itself)."""
    import json

    text = json.dumps(obj, ensure_ascii=False, **dumps)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
