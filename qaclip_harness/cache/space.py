"""The cache's room on disk: its budget, the least-recently-used eviction rule, and the free-space check.

Rule (docs/caching.md): the feature and pixel entries together stay within the budget
(``QACLIP_CACHE_BUDGET_GB``, default 64 GB). Before an entry is written, entries are removed in
the order they were last used (the time of their ``.json`` record, touched on every hit), oldest
first, until the new one fits. An entry larger than the whole budget, or larger than the free
space of the disk less a reserve, is not written: the run says so in one line and goes on
computing as if there were no cache.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

BUDGET_ENV = "QACLIP_CACHE_BUDGET_GB"
DEFAULT_BUDGET_GB = 64.0
# left free on the disk after an entry is written: checkpoints, datasets and reports share it
RESERVE_BYTES = 1 << 30


class CacheWarning(UserWarning):
    """A cache entry was not written or not used; the run goes on without it."""


def say(message: str) -> None:
    """One line about the cache, as a warning (shown in pytest's summary and on the CLI's stderr)."""
    warnings.warn(message, CacheWarning, stacklevel=3)


def budget_bytes() -> int:
    """The budget of the feature and pixel caches, from ``QACLIP_CACHE_BUDGET_GB`` (read at call time)."""
    from qaclip_harness.options import cache_budget_gb

    value = cache_budget_gb()  # checked at configure time; an OptionError (a ValueError) naming the variable
    return int((DEFAULT_BUDGET_GB if value is None else value) * 1e9)


def gb(n: int) -> str:
    """``n`` bytes in gigabytes, for messages."""
    return f"{n / 1e9:.2f} GB"


@dataclass
class Entry:
    """One cache entry on disk: its record (whose time says when it was last used) and every file it holds."""

    record: Path
    files: list[Path]
    folder: Path | None = None  # removed last (a pixel entry's folder)

    @property
    def size(self) -> int:
        """Bytes on disk (files removed meanwhile count as nothing)."""
        total = 0
        for f in self.files:
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    @property
    def last_used(self) -> float:
        """When the entry was last written or hit."""
        try:
            return self.record.stat().st_mtime
        except OSError:
            return 0.0

    def remove(self) -> None:
        """Delete the record first (the entry stops being found), then its data."""
        for f in [self.record, *self.files]:
            try:
                f.unlink()
            except OSError:
                pass  # removed by another worker, or open on a system that forbids it: harmless
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def entries(root: Path) -> list[Entry]:
    """The feature and pixel entries under the cache root ``root``."""
    found = []
    for record in sorted((root / "features").glob("*.json")):
        # .pt: the payload of entries written before schema 2 (never read now; evicted like any other)
        found.append(Entry(record, [record.with_suffix(".npz"), record.with_suffix(".pt")]))
    for record in sorted((root / "pixels").glob("*/meta.json")):
        found.append(Entry(record, [record.parent / "pixels.npy", record.parent / "rows.npy"], record.parent))
    return found


def touch(record: Path) -> None:
    """Mark an entry as used now (the eviction order)."""
    try:
        os.utime(record)
    except OSError:
        pass  # a read-only cache (a pull request's job) keeps its order


def make_room(root: Path, need: int, what: str, budget: int | None = None) -> bool:
    """Whether ``need`` more bytes may be written under ``root``: evicts by the rule above; says why not when not."""
    budget = budget_bytes() if budget is None else budget
    if need > budget:
        say(f"{what} not cached: it needs {gb(need)}, more than the cache budget of {gb(budget)} ({BUDGET_ENV})")
        return False
    present = sorted(entries(root), key=lambda e: e.last_used)
    total = sum(e.size for e in present)
    while present and total + need > budget:
        oldest = present.pop(0)
        total -= oldest.size
        oldest.remove()
    return enough_space(root, need, what)


def enough_space(folder: Path, need: int, what: str) -> bool:
    """Whether the disk of ``folder`` has ``need`` bytes free beyond the reserve; one line saying so when not."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return True  # cannot tell: the write itself reports a full disk
    if free - RESERVE_BYTES < need:
        say(
            f"{what} not cached: it needs {gb(need)} and the disk of {folder} has {gb(free)} free "
            f"(keeping {gb(RESERVE_BYTES)} for the rest of the run); computing without the cache"
        )
        return False
    return True
