"""A project's own model cards, dataset cards and expected numbers: the ``[tool.qaclip]`` table of its pyproject.toml.

.. code-block:: toml

    [tool.qaclip]
    cards = "qaclip/cards.yaml"          # a file or a folder of *.yaml, or a list of them
    datasets = "qaclip/datasets.yaml"
    expected = "qaclip/expected"

Paths are relative to that pyproject.toml. For one run an option or variable replaces a key
(``--qaclip-cards`` / ``QACLIP_CARDS`` and so on; several paths separated by ``os.pathsep``,
relative to the current folder). The pyproject.toml is the nearest one at or above the folder the
run starts from (for pytest, its rootdir first). Every mistake (bad TOML, an unknown key, a path
that does not exist, a card whose name is taken) is one :class:`ProjectError` line naming the file
and the key; nothing is registered until the whole table has been read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaclip_core.errors import QAClipError

KEYS = ("cards", "datasets", "expected")
ENV = {"cards": "QACLIP_CARDS", "datasets": "QACLIP_DATASETS", "expected": "QACLIP_EXPECTED"}
OPTION = {"cards": "--qaclip-cards", "datasets": "--qaclip-datasets", "expected": "--qaclip-expected"}
YAML_SUFFIXES = (".yaml", ".yml")


class ProjectError(QAClipError, ValueError):
    """A ``[tool.qaclip]`` table, or an option replacing one of its keys, that cannot be used (one line)."""


@dataclass(frozen=True)
class Project:
    """What a project adds to the built-in cards, datasets and expected numbers."""

    pyproject: Path | None = None  # the pyproject.toml read (None: none found, or no [tool.qaclip] in it)
    cards: tuple[Path, ...] = ()  # card files (folders expanded to their *.yaml)
    datasets: tuple[Path, ...] = ()  # dataset card files
    expected: tuple[Path, ...] = ()  # expected files or folders, as given
    origin: dict[str, str] = field(default_factory=dict)  # key -> where it was set, for messages

    @property
    def empty(self) -> bool:
        """Whether the project adds nothing."""
        return not (self.cards or self.datasets or self.expected)


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    else:  # the same parser, for Python 3.9 and 3.10 (a dependency there); mypy checks one version's branch
        import tomli  # type: ignore[import-not-found,unused-ignore]  # installed only on Python < 3.11

        return tomli


def find_pyproject(start: str | Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start``."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder / "pyproject.toml"
    return None


def read_table(pyproject: Path) -> dict[str, Any] | None:
    """The ``[tool.qaclip]`` table of ``pyproject`` (None when it has none), checked for unknown keys."""
    toml = _toml()
    try:
        doc = toml.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ProjectError(f"{pyproject}: cannot be read ({e})") from None
    except toml.TOMLDecodeError as e:
        raise ProjectError(f"{pyproject}: is not valid TOML: {e}") from None
    table = doc.get("tool", {}).get("qaclip") if isinstance(doc.get("tool"), dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ProjectError(f"{pyproject}: tool.qaclip must be a table ([tool.qaclip]), got {type(table).__name__}")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ProjectError(
            f"{pyproject}: [tool.qaclip] has unknown key(s) {', '.join(repr(k) for k in unknown)} (known: {', '.join(KEYS)})"
        )
    return table


def _paths(value: Any, base: Path, where: str, key: str) -> tuple[Path, ...]:
    """The existing files a key names (folders expanded to their YAML files for cards and datasets)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ProjectError(f"{where}: expected a path or a list of paths (files or folders), got {value!r:.80}")
    out: list[Path] = []
    for item in items:
        path = (base / Path(item).expanduser()).resolve()
        if not path.exists():
            raise ProjectError(f"{where}: {item!r} does not exist (looked for {path})")
        if path.is_dir() and key != "expected":  # expected folders are read by the expected-file loader itself
            files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
            if not files:
                raise ProjectError(f"{where}: the folder {item!r} holds no *.yaml files")
            out.extend(files)
        else:
            out.append(path)
    return tuple(out)


def load_project(
    start: str | Path,
    overrides: Mapping[str, tuple[str, str]] | None = None,
    pyproject: Path | None = None,
    relative_to: str | Path | None = None,
    keys: Sequence[str] = KEYS,
) -> Project:
    """The project whose pyproject.toml is ``pyproject`` (or the nearest at or above ``start``), with ``overrides``.

    ``overrides`` maps a key to ``(value, name)``: an option or variable's value (paths joined by
    ``os.pathsep``, relative to ``relative_to``, default ``start``) and its name for messages; it
    replaces the table's key. Only ``keys`` are read (``qaclip eval`` and ``record`` need no expected numbers,
    and ``record`` creates their folder).
    """
    pyproject = pyproject if pyproject is not None else find_pyproject(start)
    table = read_table(pyproject) if pyproject is not None else None
    values: dict[str, tuple[Path, ...]] = {}
    origin: dict[str, str] = {}
    for key in keys:
        given = (overrides or {}).get(key)
        if given is not None and given[0].strip():
            value, name = given
            base = Path(relative_to if relative_to is not None else start).resolve()
            values[key] = _paths([v for v in value.split(os.pathsep) if v.strip()], base, f"{name} {value!r}", key)
            origin[key] = name
        elif table is not None and key in table:
            assert pyproject is not None
            where = f"{pyproject}: [tool.qaclip] {key}"
            values[key] = _paths(table[key], pyproject.parent, where, key)
            origin[key] = where
    return Project(
        pyproject if table is not None else None,
        values.get("cards", ()),
        values.get("datasets", ()),
        values.get("expected", ()),
        origin,
    )


def overrides_from_env() -> dict[str, tuple[str, str]]:
    """``QACLIP_CARDS``, ``QACLIP_DATASETS``, ``QACLIP_EXPECTED`` as overrides (read now)."""
    return {key: (os.environ[var], var) for key, var in ENV.items() if os.environ.get(var, "").strip()}


def register(project: Project) -> None:
    """Add the project's model and dataset cards to the registries (its expected files are read by the suite)."""
    import yaml

    from qaclip_core.registry import register_cards
    from qaclip_harness.data.catalog import register_datasets

    named = f" (named by {project.origin['cards']})" if "cards" in project.origin else ""
    if project.pyproject is not None and project.cards and str(project.pyproject.parent) not in sys.path:
        # a card's backend module:attribute may name the project's own code: importable from its folder (after
        # anything installed), whether the run is `pytest`, `python -m pytest` or the qaclip command
        sys.path.append(str(project.pyproject.parent))
    for path in project.cards:
        try:
            register_cards(path)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ProjectError(f"{path}: is not valid YAML{at}: {getattr(e, 'problem', None) or e}{named}") from None
        except (ValueError, OSError) as e:  # the core's card errors name the file and the card
            text = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ProjectError((text if str(path) in text else f"{path}: {text}") + named) from None
    for path in project.datasets:
        register_datasets(path)


def expected_paths(project: Project) -> Sequence[Path]:
    """The project's expected files and folders, in the order given."""
    return project.expected
