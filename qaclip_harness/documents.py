"""Reading JSON and YAML documents strictly: one error naming the file and the place, whatever the bytes.

A UTF-8 BOM is allowed; invalid UTF-8, a duplicate key, nesting deeper than :data:`MAX_DEPTH`, a
number too long to convert and (YAML) aliases that expand past :data:`MAX_NODES` values are errors,
as is anything the parser refuses. Each reader passes its own error class, so its callers catch
what they caught before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from qaclip_core.errors import QAClipError

MAX_DEPTH = 100  # levels of nesting: the package's files have fewer than 10; a reader walking deeper could overflow
MAX_NODES = 1_000_000  # YAML values counted with aliases expanded ("billion laughs" stays a file, not a hang)


class DocumentError(QAClipError, ValueError):
    """A JSON or YAML document that cannot be read (the message names the file and the place)."""


Error = Callable[[str], Exception]


def _text(data: bytes, source: object, error: Error) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(
            f"{source}: is not UTF-8 at line {line} (byte {e.start}: {data[e.start : e.start + 1]!r})"
        ) from None


def _read(path: str | Path, error: Error) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None


def _short(e: ValueError) -> str:
    text = str(e)
    return "a number of more digits than Python converts" if "integer string conversion" in text else text


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(text: str, source: object, error: Error = DocumentError) -> Any:
    """``text`` as JSON (NaN and Infinity allowed, as Python writes them); ``error`` naming ``source`` and where."""
    try:
        doc = json.loads(text, object_pairs_hook=_unique)
    except json.JSONDecodeError as e:
        raise error(f"{source}: is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(f"{source}: nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # a duplicate key, or an integer of more digits than Python converts
        raise error(f"{source}: is not valid JSON: {_short(e)}") from None
    check_bounds(doc, source, error)
    return doc


def read_json(path: str | Path, error: Error = DocumentError) -> Any:
    """The JSON document in ``path`` (see :func:`parse_json`)."""
    return parse_json(_text(_read(path, error), path, error), path, error)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class says so
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r:.60} (first on line {first})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: object, error: Error = DocumentError) -> Any:
    """``text`` as YAML (safe types only); ``error`` naming ``source`` and the line."""
    loader = None
    try:
        loader = _StrictLoader(text)  # yaml.safe_load's own steps, with this loader (a SafeLoader)
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{source}: is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise error(f"{source}: nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise error(f"{source}: is not valid YAML: {_short(e)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_bounds(doc, source, error)
    return doc


def read_yaml(path: str | Path, error: Error = DocumentError) -> Any:
    """The YAML document in ``path`` (see :func:`parse_yaml`)."""
    return parse_yaml(_text(_read(path, error), path, error), path, error)


def key_text(key: object) -> str:
    """A key for a message: as it is when it is a plain one-line name, else its repr (one line, controls escaped)."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key:
        return key
    return repr(key)[:80]


def check_bounds(doc: Any, source: object, error: Error = DocumentError) -> None:
    """Refuse nesting deeper than MAX_DEPTH and more than MAX_NODES values (a shared value counted each time)."""
    stack, count = [(doc, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise error(f"{source}: nests deeper than {MAX_DEPTH} levels (or refers to itself)")
        if count > MAX_NODES:
            raise error(f"{source}: holds more than {MAX_NODES:,} values (with its aliases expanded)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value if isinstance(k, tuple))
        elif isinstance(value, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in value)
