"""Progress of long stages (encoding images, texts, prompts): one small interface, several displays.

An evaluation reports progress through a *progress factory*: ``factory(desc, total, unit)``
returns a :class:`Stage` that receives ``update(n)`` calls and ``close()`` once. The CLI shows
tqdm bars; the suite writes through pytest's terminal reporter (see ``qaclip_harness/suite/terminal.py``),
so progress is visible without ``-s``. ``True`` means tqdm, ``False`` or ``None`` nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Callable, Protocol, TypeVar, Union

T = TypeVar("T")


class Stage(Protocol):
    """One stage of work with a known number of items."""

    def update(self, n: int) -> None:
        """``n`` more items are done."""

    def close(self) -> None:
        """The stage is over (also after an error)."""


ProgressFactory = Callable[[str, int, str], Stage]
Progress = Union[bool, None, ProgressFactory]


class _Silent:
    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


class _Tqdm:
    def __init__(self, desc: str, total: int, unit: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        """Advance the bar."""
        self.bar.update(n)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def stage(progress: Progress, desc: str, total: int, unit: str) -> Stage:
    """A :class:`Stage` of ``progress`` (a factory, ``True`` for tqdm, falsy for none)."""
    if not progress:
        return _Silent()
    if progress is True:
        return _Tqdm(desc, total, unit)
    return progress(desc, total, unit)


def track(
    items: Iterable[T], progress: Progress, desc: str, total: int, unit: str, size: Callable[[T], int] = lambda _: 1
) -> Iterator[T]:
    """Yield ``items``, reporting ``size(item)`` units done after each one is consumed."""
    s = stage(progress, desc, total, unit)
    try:
        for item in items:
            yield item
            s.update(size(item))
    finally:
        s.close()


def format_rate(done: int, seconds: float, unit: str) -> str:
    """``'1,234 images in 12.3 s (100.3 images/s)'``."""
    rate = done / seconds if seconds > 0 else float("inf")
    return f"{done:,} {unit} in {seconds:.1f} s ({rate:,.1f} {unit}/s)"


def format_eta(done: int, total: int, elapsed: float) -> str:
    """Remaining time as ``m:ss`` (``h:mm:ss`` past an hour), or ``?`` before the first item."""
    if done <= 0 or elapsed <= 0:
        return "?"
    remaining = round((total - done) * elapsed / done)
    h, rest = divmod(remaining, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineStage:
    """A stage drawn on one line: live (rewritten in place) on a terminal, else a line at the end.

    ``write(text, final)`` does the drawing: with ``live`` it is called at most every
    ``interval`` seconds with ``final=False`` and once with ``final=True``; without ``live`` only
    the final line is written, plus a line every ``heartbeat`` seconds of a long stage, so a CI log
    shows that work goes on.
    """

    def __init__(
        self,
        write: Callable[[str, bool], None],
        desc: str,
        total: int,
        unit: str,
        live: bool,
        interval: float = 0.5,
        heartbeat: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.write, self.desc, self.total, self.unit, self.live = write, desc, total, unit, live
        self.interval, self.heartbeat, self.clock = interval, heartbeat, clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._closed = False

    def _line(self) -> str:
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}, {rate:,.1f} {self.unit}/s, "
            f"ETA {format_eta(self.done, self.total, elapsed)}"
        )

    def update(self, n: int) -> None:
        """Count ``n`` items; redraw when the interval (live) or the heartbeat (log) has passed."""
        self.done += n
        now = self.clock()
        due = self.interval if self.live else self.heartbeat
        if now - self._last >= due and self.done < self.total:
            self._last = now
            self.write(self._line(), False)

    def close(self) -> None:
        """Write the final line once: count, time and rate (or how far it got)."""
        if self._closed:
            return
        self._closed = True
        elapsed = self.clock() - self.start
        what = format_rate(self.done, elapsed, self.unit)
        if self.done < self.total:
            what = f"stopped after {what} of {self.total:,}"
        self.write(f"{self.desc}: {what}", True)


def line_progress(write: Callable[[str, bool], None], live: bool, **kw) -> ProgressFactory:
    """A progress factory of :class:`LineStage` drawn by ``write``."""

    def factory(desc: str, total: int, unit: str) -> Stage:
        return LineStage(write, desc, total, unit, live, **kw)

    return factory
