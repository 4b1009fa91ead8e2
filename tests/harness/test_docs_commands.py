"""Every command in README.md and docs/ names a real tox env, pytest option, qaclip subcommand and option, or tool;
every repository path they name exists.

Commands are read from fenced ``bash`` blocks and from inline code that starts with a known
program. Placeholders (``$DATAPATH``, ``<dir>``, ``my.pt``) are left alone: only the words that
name something of this project are checked.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = ("pytest", "python", "python3", "tox", "qaclip", "torchrun", "pip")
# top-level folders whose paths the docs may name
TRACKED_ROOTS = ("qaclip_core/", "qaclip_harness/", "benchmarks/", "tests/", "tools/", "expected/", "docs/", ".github/")


def _commands() -> Iterator[tuple[str, str]]:
    """(file:line, command) for every command line of the docs."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
            start = text[: block.start()].count("\n") + 2
            for i, raw in enumerate(block.group(1).splitlines()):
                line = raw.split(" #", 1)[0].strip()
                if line and not line.startswith("#"):
                    for part in re.split(r"\s*(?:&&|\|\|?|;)\s*", line):
                        yield f"{doc.name}:{start + i}", part
        for m in re.finditer(r"`([^`\n]+)`", text):
            words = m.group(1).split()
            if words and words[0] in PROGRAMS and len(words) > 1:
                for part in re.split(r"\s*(?:&&|;)\s*", m.group(1)):
                    yield f"{doc.name}:{text[: m.start()].count(chr(10)) + 1}", part


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _strip_env(words: list[str]) -> list[str]:
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    return words


@cache
def _tox_envs() -> frozenset:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "tox.ini")
    return frozenset(s.split(":", 1)[1] for s in cfg.sections() if s.startswith("testenv:"))


@cache
def _help(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, *args, "--help"], capture_output=True, text=True, timeout=600, cwd=REPO, check=False
    )
    assert out.returncode == 0, f"{' '.join(args)} --help failed: {out.stderr[-2000:]}"
    return out.stdout


def _pytest_help() -> str:
    return _help("-m", "pytest", "-p", "no:cacheprovider")


def _knows(help_text: str, option: str) -> bool:
    return re.search(rf"(^|[\s,\[]){re.escape(option)}([\s=,\]]|$)", help_text, flags=re.M) is not None


def _options(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--") and len(w) > 2]


def _check(where: str, command: str) -> list[str]:
    """What is wrong with one command (empty when it names only real things)."""
    words = _strip_env(_words(command))
    if not words:
        return []
    problems = []
    prog, rest = words[0], words[1:]
    if prog in ("python", "python3") and rest[:2] == ["-m", "pytest"]:
        prog, rest = "pytest", rest[2:]
    if prog in ("python", "python3") and rest[:2] == ["-m", "tox"]:
        prog, rest = "tox", rest[2:]
    if prog in ("python", "python3") and rest[:2] == ["-m", "qaclip_harness"]:
        prog, rest = "qaclip", rest[2:]
    if prog == "torchrun":
        rest = rest[rest.index("-m") + 1 :] if "-m" in rest else []
        if rest[:1] == ["qaclip_harness"]:
            prog, rest = "qaclip", rest[1:]
    if prog == "tox":
        envs = [rest[i + 1] for i, w in enumerate(rest[:-1]) if w == "-e"]
        problems += [
            f"{where}: tox env {e!r} is not in tox.ini" for e in envs for e in e.split(",") if e not in _tox_envs()
        ]
    elif prog == "pytest":
        problems += [f"{where}: pytest knows no option {o}" for o in _options(rest) if not _knows(_pytest_help(), o)]
        problems += [
            f"{where}: {p} does not exist"
            for p in rest
            if p.startswith(("benchmarks", "tests")) and not (REPO / p.split("::")[0]).exists()
        ]
    elif prog == "qaclip":
        sub = rest[0] if rest and not rest[0].startswith("-") else None
        if sub is not None:
            top = _help("-m", "qaclip_harness")
            if not re.search(rf"\b{re.escape(sub)}\b", top):
                problems.append(f"{where}: qaclip has no subcommand {sub!r}")
            else:
                text = _help("-m", "qaclip_harness", sub)
                problems += [
                    f"{where}: qaclip {sub} knows no option {o}" for o in _options(rest[1:]) if not _knows(text, o)
                ]
    elif prog in ("python", "python3") and rest and rest[0].startswith("tools/"):
        tool = REPO / rest[0]
        if not tool.is_file():
            problems.append(f"{where}: {rest[0]} does not exist")
        else:
            source = tool.read_text(encoding="utf-8")
            problems += [
                f"{where}: {rest[0]} takes no option {o}" for o in _options(rest[1:]) if f'"{o}"' not in source
            ]
    elif prog in ("python", "python3") and rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1]
        if module.startswith(("qaclip_core", "qaclip_harness")):
            path = REPO / Path(*module.split("."))
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                problems.append(f"{where}: no module {module}")
    return problems


def test_the_docs_hold_commands():
    commands = list(_commands())
    assert len(commands) > 30, "the docs were expected to hold the suite's commands"
    assert any("tox -e suite" in c for _, c in commands) and any("tox -e tests" in c for _, c in commands)


def test_every_command_names_real_things():
    problems = [p for where, command in _commands() for p in _check(where, command)]
    assert not problems, "\n".join(problems)


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"`([^`\s]+)`", text):
            path = m.group(1).rstrip(".,:;)")
            if path.startswith(TRACKED_ROOTS) and not any(c in path for c in "<>*$") and not (REPO / path).exists():
                missing.append(f"{doc.name}:{text[: m.start()].count(chr(10)) + 1}: {path}")
        for m in re.finditer(r"\]\(([^)#]+)\)", text):  # markdown links to files of the repository
            target = m.group(1)
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                missing.append(f"{doc.name}: link to {target}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "command,problem",
    [
        ("tox -e nonsuch", "tox env"),
        ("pytest benchmarks --no-such-option", "pytest knows no option"),
        ("qaclip eval --no-such-flag", "knows no option"),
        ("qaclip frobnicate", "no subcommand"),
        ("python tools/nonsuch.py", "does not exist"),
    ],
)
def test_the_check_catches_what_does_not_exist(command, problem):
    assert any(problem in p for p in _check("x.md:1", command))
