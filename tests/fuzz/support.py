"""The fuzz campaign's machinery: hostile values, mutated documents, their bytes, and the property every reader keeps.

The property (issue 30): given any bytes where a file of its format belongs, a reader either accepts the
document (and what it returns can be used: the code that consumes it raises only the project's errors
too) or raises the project's own error, whose message names the file; never another exception, never a
hang (a watchdog per example), never a partial write (the folder is compared before and after).

Examples per format come from ``fuzz(n)``: n in CI, derandomised (the same examples on every run); the
long run by hand (``python tools/fuzz.py``) multiplies n by ``QACLIP_FUZZ_SCALE`` and draws from a seed.
Counts of examples, accepted and refused documents are collected per format for its report.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("QACLIP_FUZZ_SCALE", "1"))
LONG = os.environ.get("QACLIP_FUZZ_LONG", "") not in ("", "0")
HANG_SECONDS = float(os.environ.get("QACLIP_FUZZ_HANG_SECONDS", "60"))  # one example: far beyond any honest read
STATS: dict[str, Counter] = defaultdict(Counter)  # format -> examples, accepted, refused


def fuzz(examples: int) -> settings:
    """Hypothesis settings for one format: ``examples`` in CI (derandomised), times QACLIP_FUZZ_SCALE by hand."""
    return settings(
        max_examples=max(1, math.ceil(examples * SCALE)),
        derandomize=not LONG,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no explain: it traces
    )


# ------------------------------------------------------------------------------------------------
# hostile values

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\r\n",
    "\t",
    "\x1b[31m",
    "\u202e",
    "\u2028",
    "../../etc/passwd",
    "/abs/path",
    "C:\\Windows",
    "<script>alert(1)</script>",
    "%s%n%x",
    "{0}{name}",
    "${HOME}",
    "NaN",
    "1e999",
    "-0",
    "true",
    "null",
    "~",
    "0x1F",
    "١٢٣",  # Arabic-Indic digits: isdigit() is True, int() takes them
    "１２",  # full-width digits
    "é" * 3,
    "中文",
    "a" * 300,
]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e-320, 1e308, math.nan, math.inf, -math.inf]


def texts() -> st.SearchStrategy[str]:
    """Short text of any code point (surrogates and controls included), nasty fixed strings, long text."""
    anything = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
    long = st.integers(1_000, 200_000).map(lambda n: "x" * n)
    return st.one_of(anything, st.sampled_from(NASTY_TEXT), long)


def numbers() -> st.SearchStrategy[Any]:
    """Integers and floats, NaN and infinities, extremes."""
    return st.one_of(st.sampled_from(NASTY_NUMBERS), st.integers(), st.floats(allow_nan=True, allow_infinity=True))


def nested(depth: int, leaf: object = 1) -> object:
    """``depth`` levels of lists and mappings around ``leaf``."""
    out = leaf
    for i in range(depth):
        out = [out] if i % 2 else {"k": out}
    return out


def hostile_values() -> st.SearchStrategy[Any]:
    """Anything a JSON or YAML document could hold where another type was expected."""
    scalar = st.one_of(st.none(), st.booleans(), numbers(), texts())
    small = st.recursive(
        scalar,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        max_leaves=6,
    )
    # deeper than any reader's limit (100), far from Python's recursion limit: the generators stay deterministic
    return st.one_of(small, st.integers(20, 200).map(nested))


# ------------------------------------------------------------------------------------------------
# documents mutated at a place


def places(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every path into ``doc`` (mapping keys and list indices), the root first."""
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from places(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from places(v, (*path, i))


def _parent(doc: Any, path: tuple) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated(draw: Callable, valid: st.SearchStrategy[Any], most: int = 3) -> tuple[Any, list[tuple]]:
    """A document of ``valid`` with up to ``most`` mutations (a value replaced, a key dropped or added, a node
    wrapped); also the places mutated. Zero mutations: the valid document itself."""
    doc = copy.deepcopy(draw(valid))
    done: list[tuple] = []
    for _ in range(draw(st.integers(0, most))):
        path = draw(st.sampled_from(list(places(doc))))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "wrap"]))
        value = draw(hostile_values())
        if not path:
            doc = value if action != "wrap" else [doc]
        else:
            parent = _parent(doc, path)
            key = path[-1]
            if action == "replace":
                parent[key] = value
            elif action == "drop":
                del parent[key]
            elif action == "wrap":
                parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
            elif isinstance(parent, dict):
                parent[draw(st.one_of(texts(), st.sampled_from(["x", "why", "name"])))] = value
            else:
                parent.insert(key, value)
        done.append(path)
    return doc, done


# ------------------------------------------------------------------------------------------------
# bytes of a document


def _json_emit(obj: Any, dup: Callable[[], bool], out: list[str]) -> None:
    """JSON as Python writes it (NaN, Infinity), but a mapping may give a key twice (``dup``)."""
    if isinstance(obj, dict):
        out.append("{")
        items = list(obj.items())
        if items and dup():
            items.append((items[0][0], None))
        for i, (k, v) in enumerate(items):
            out.append(("," if i else "") + json.dumps(str(k)) + ":")
            _json_emit(v, dup, out)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _json_emit(v, dup, out)
        out.append("]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        out.append("NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity"))
    elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= 10**4000:
        out.append(str(obj)[:4290])  # json.dumps refuses more digits than Python converts back
    else:
        out.append(json.dumps(obj))


@st.composite
def raw_bytes(draw: Callable, text: str, deep: int = 100_000) -> bytes:
    """``text`` as UTF-8 (lone surrogates as their invalid byte sequences), perhaps damaged: a BOM, CRLF line ends,
    cut short, a stray byte, garbage after it, a huge number, only garbage, or ``deep`` brackets opened."""
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(
        st.sampled_from(
            ["none", "none", "none", "bom", "crlf", "cut", "byte", "tail", "digits", "garbage", "empty", "deep"]
        )
    )
    if damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif damage == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "byte" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\x80", b"\n", b'"', b"{"])) + data[at:]
    elif damage == "tail":
        data += draw(st.sampled_from([b"}", b"\n{}", b"garbage", b"\x00\x00", b"]]]"]))
    elif damage == "digits":
        data = data.replace(b"1", b"9" * 5000, 1)
    elif damage == "garbage":
        data = draw(st.binary(max_size=200))
    elif damage == "empty":
        data = b""
    elif damage == "deep":
        data = b"[" * deep + data
    return data


@st.composite
def json_bytes(draw: Callable, valid: st.SearchStrategy[Any], most: int = 3) -> tuple[bytes, list[tuple]]:
    """A mutated document of ``valid`` as (perhaps damaged) JSON bytes, and the places mutated."""
    doc, done = draw(mutated(valid, most))
    dup_rate = draw(st.sampled_from([0.0, 0.0, 0.2]))
    coin = st.floats(0, 1)
    out: list[str] = []
    _json_emit(doc, lambda: dup_rate > 0 and draw(coin) < dup_rate, out)
    text = "".join(out)
    if draw(st.booleans()):  # as json.dumps(indent=...) writes it, lines and all
        with contextlib.suppress(ValueError, RecursionError):
            text = json.dumps(doc, indent=1, ensure_ascii=draw(st.booleans()))
    return draw(raw_bytes(text)), done


LAUGHS = "a: &a [1, 2]\n" + "".join(  # "billion laughs": each level ten aliases of the one before
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg")
)
YAML_HOSTILE = [
    LAUGHS,
    "&a [*a]",
    "!!python/object/apply:os.system ['echo pwned']",
    "key: !!binary aGVsbG8=",
    "when: 2001-12-14t21:59:43.10-05:00\n",
    "? [a, b]\n: 1\n",
    "a: 1\na: 2\n",
    "a:\n\t- tab\n",
    "[" * 400,
    "x: " + "9" * 5000,
    "--- a\n--- b\n",
    "%YAML 9.9\n--- x",
    "x: *undefined",
    "{a: 1, a: 1}",
    "\x00\x01",
    "- !!set {a, b}",
    "x: .nan\ny: -.inf",
]


@st.composite
def yaml_bytes(draw: Callable, valid: st.SearchStrategy[Any], most: int = 3) -> tuple[bytes, list[tuple]]:
    """A mutated document of ``valid`` as (perhaps damaged) YAML bytes; or YAML's own traps (aliases that expand,
    recursion, python tags, duplicate keys, tabs, deep nesting); and the places mutated."""
    import yaml

    if draw(st.integers(0, 9)) == 0:
        return draw(raw_bytes(draw(st.sampled_from(YAML_HOSTILE)), deep=400)), []
    doc, done = draw(mutated(valid, most))
    try:
        text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False, width=10**6)
    except (yaml.YAMLError, RecursionError, ValueError, UnicodeError):
        text = json.dumps(doc, default=str)  # JSON is YAML too
    if draw(st.integers(0, 4)) == 0 and isinstance(doc, dict) and doc:  # a top-level key given twice
        key = next(iter(doc))
        text += yaml.safe_dump({key: None}) if isinstance(key, str) else ""
    return draw(raw_bytes(text, deep=400)), done  # PyYAML reads 100,000 brackets in seconds, not a hang


# ------------------------------------------------------------------------------------------------
# the property


class Hang(BaseException):
    """An example ran past the watchdog: a hang (a BaseException, so no reader's ``except Exception`` takes it)."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds``."""

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def snapshot(folder: Path, ignore: Sequence[str] = (".lock",)) -> dict[str, str]:
    """Every file under ``folder`` (but lock files) with the sha256 of its bytes; folders as ``<dir>``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if any(rel.endswith(s) for s in ignore):
            continue
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def holds(
    fmt: str,
    read: Callable[[], Any],
    errors: type[BaseException] | tuple[type[BaseException], ...],
    names: Sequence[str],
    folder: Path,
    use: Callable[[Any], Any] | None = None,
    changes: Callable[[dict[str, str], dict[str, str]], bool] | None = None,
) -> Any:
    """The property for one example: ``read()`` accepts (then ``use(result)`` too raises only ``errors``) or raises
    ``errors`` with a one-line message naming one of ``names``; nothing else is raised, nothing hangs, and
    ``folder`` is unchanged afterwards (``changes(before, after)`` may allow what a write that succeeded makes)."""
    before = snapshot(folder)
    result = None
    with watchdog():
        try:
            result = read()
            if use is not None:
                use(result)
            STATS[fmt]["accepted"] += 1
        except errors as e:
            STATS[fmt]["refused"] += 1
            refused = e
        else:
            refused = None
    if refused is not None:  # the project's own error: one line naming the file
        message = str(refused)
        assert any(n in message for n in names), f"{type(refused).__name__} does not name {names}: {message[:500]}"
        assert "\n" not in message.strip(), f"more than one line: {message[:500]}"
    STATS[fmt]["examples"] += 1
    after = snapshot(folder)
    if after != before and not (changes and changes(before, after)):
        gone = sorted(set(before) - set(after))
        new = sorted(set(after) - set(before))
        changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        raise AssertionError(f"{folder} changed: removed {gone}, added {new}, rewritten {changed}")
    return result
