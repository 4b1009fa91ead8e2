"""Every output sample in README.md and docs/*.md, regenerated from (or checked against) the command it shows.

A sample is a fenced block without a language whose first line is ``$ COMMAND``: the rest of the block is what
that command prints, or an excerpt of it, where a line ``...`` stands for any number of lines left out. The
command runs here, from the repository root, as a new user would run it: a fresh empty HOME (so the package cache
``~/.cache/qaclip`` is empty and paths under it print as ``~``), offline (HF_HUB_OFFLINE=1), no QACLIP_* settings,
an 80-column terminal, the interpreter running this script first on PATH. Samples that show the same command
share one run of it.

Compared are the numbers and the shape of every line shown; masked are the parts that belong to one run: the
seconds pytest took, times in run names (20261204T022923), commits in parentheses, source line numbers in pytest's
skip lines, the length of pytest's ``=====`` rules.

    python tools/doc_samples.py            # rewrite every sample from a fresh run of its command
    python tools/doc_samples.py --check    # exit 1, with a diff per stale sample, if any sample is out of date
    python tools/doc_samples.py --list     # the samples and their commands

Rewriting keeps each sample's excerpt: every line shown is replaced by the line of the new output with the same
shape (the same words, numbers aside), ``...`` lines stay. A line whose shape is gone (the output's wording
changed) is reported: pick the excerpt again by hand, then run the tool.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GAP = "..."
BLOCK = re.compile(r"^```[ \t]*\n(?P<body>\$ .*?)^```[ \t]*$", flags=re.M | re.S)
TIMEOUT = 1800

# run-specific parts, masked on both sides before comparing
MASKS = [
    (re.compile(r" in \d+(?:\.\d+)?s(?: \(\d+:\d\d:\d\d\))?"), " in <seconds>"),  # pytest's closing line
    (re.compile(r"^=+ (.*?) =+$"), r"== \1 =="),  # pytest's rules: their length follows the text inside
    (re.compile(r"\b\d{8}T\d{6}\b"), "<time>"),  # run folders named <time>-<name>
    (re.compile(r"\((?:[0-9a-f]{7,40})(?:[+ ]dirty)?\)"), "(<commit>)"),  # the commit a run was made from
    (re.compile(r"(\.py):\d+:"), r"\1:<line>:"),  # where pytest.skip was called
]
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")


@dataclass
class Sample:
    """One output sample: where it is, the command it shows and the lines shown below it."""

    doc: Path
    start: int  # offset of the first line after ``$ COMMAND`` in the document's text
    end: int  # offset of the closing fence
    command: str
    lines: list[str]

    @property
    def where(self) -> str:
        """``file:line`` of the command line."""
        text = self.doc.read_text(encoding="utf-8")
        return f"{self.doc.relative_to(REPO)}:{text[: self.start].count(chr(10))}"


def samples(docs: list[Path] = DOCS) -> list[Sample]:
    """Every output sample of ``docs``, in order."""
    found = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            first, _, rest = m.group("body").partition("\n")
            body_start = m.start("body") + len(first) + 1
            found.append(Sample(doc, body_start, m.end("body"), first[2:].strip(), rest.rstrip("\n").split("\n")))
    return found


def mask(line: str) -> str:
    """``line`` with its run-specific parts replaced by placeholders."""
    line = line.rstrip()
    for rx, repl in MASKS:
        line = rx.sub(repl, line)
    return line


def shape(line: str) -> str:
    """What stays of a line when its numbers change: the masked line, numbers and runs of spaces made uniform."""
    return re.sub(r"\s+", " ", NUMBER.sub("#", mask(line))).strip()


def run(command: str, timeout: int = TIMEOUT) -> list[str]:
    """The lines ``command`` prints (stdout and stderr), run as the module docstring says."""
    home = Path(tempfile.mkdtemp(prefix="qaclip-doc-home-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QACLIP_", "PYTEST_", "GITHUB_"))}
        env.update(
            HOME=str(home),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            COLUMNS="80",
            NO_COLOR="1",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        env.pop("XDG_CACHE_HOME", None)
        out = subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        text = out.stdout.replace(str(home), "~")
        return [line.rstrip() for line in text.rstrip("\n").split("\n")]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _segments(lines: list[str]) -> list[list[str]]:
    segs: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == GAP:
            segs.append([])
        else:
            segs[-1].append(line)
    return segs


def matches(sample: list[str], output: list[str]) -> bool:
    """Whether ``sample`` (with ``...`` gaps) is an excerpt of ``output``, line for line after masking."""
    want, have = [mask(x) for x in sample], [mask(x) for x in output]
    segs = _segments(want)
    anchored_start, anchored_end = bool(segs[0]), bool(segs[-1])
    pos = 0
    for n, seg in enumerate(segs):
        if not seg:
            continue
        if n == 0 and anchored_start:
            if have[: len(seg)] != seg:
                return False
            pos = len(seg)
            continue
        last = n == len(segs) - 1 and anchored_end
        starts = [len(have) - len(seg)] if last else range(pos, len(have) - len(seg) + 1)
        hit = next((i for i in starts if i >= pos and have[i : i + len(seg)] == seg), None)
        if hit is None:
            return False
        pos = hit + len(seg)
    return True


def regenerate(sample: list[str], output: list[str]) -> tuple[list[str], list[str]]:
    """(the sample's lines from ``output``, keeping its excerpt; the lines whose shape ``output`` no longer has)."""
    shapes = [shape(x) for x in output]
    new, lost, pos = [], [], 0
    segs = _segments(sample)
    for n, seg in enumerate(segs):
        if n:
            new.append(GAP)
        for i, line in enumerate(seg):
            if n == 0 and i == pos and pos < len(output) and shapes[pos] == shape(line):
                hit: int | None = pos
            else:
                hit = next((j for j in range(pos, len(output)) if shapes[j] == shape(line)), None)
            if hit is None:
                lost.append(line)
                new.append(line)
                continue
            new.append(output[hit])
            pos = hit + 1
    return new, lost


def _outputs(chosen: list[Sample]) -> Iterator[tuple[Sample, list[str], float]]:
    done: dict[str, tuple[list[str], float]] = {}
    for s in chosen:
        if s.command not in done:
            t0 = time.perf_counter()
            done[s.command] = (run(s.command), time.perf_counter() - t0)
        yield s, *done[s.command]


def _write(sample: Sample, lines: list[str]) -> None:
    text = sample.doc.read_text(encoding="utf-8")
    sample.doc.write_text(text[: sample.start] + "\n".join(lines) + "\n" + text[sample.end :], encoding="utf-8")


def main(argv: list[str]) -> int:
    """Check or rewrite the samples; 1 when a check finds a stale one or a rewrite cannot place a line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 naming every stale sample")
    p.add_argument("--list", action="store_true", help="list the samples and their commands")
    p.add_argument("--only", default="", help="only the samples whose command contains this text")
    args = p.parse_args(argv)
    chosen = [s for s in samples() if args.only in s.command]
    if args.list:
        for s in chosen:
            print(f"{s.where}: $ {s.command}  ({len(s.lines)} lines)")
        return 0
    status = 0
    # rewrite from the last sample of a file to the first, so that earlier offsets stay valid
    results = list(_outputs(chosen))
    for s, output, seconds in reversed(results):
        if matches(s.lines, output):
            print(f"{s.where}: up to date ({seconds:.0f} s)")
            continue
        if args.check:
            status = 1
            fresh, _ = regenerate(s.lines, output)
            diff = difflib.unified_diff(s.lines, fresh, "in the docs", "printed now", lineterm="", n=1)
            print(f"{s.where}: stale sample of `{s.command}`:\n" + "\n".join(diff))
            continue
        fresh, lost = regenerate(s.lines, output)
        _write(s, fresh)
        if lost or not matches(fresh, output):
            status = 1
            print(f"{s.where}: rewritten, but these lines are no longer printed; choose the excerpt again by hand:")
            print("\n".join(f"    {line}" for line in lost) or "    (the lines shown are no longer adjacent)")
        else:
            print(f"{s.where}: rewritten ({seconds:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
