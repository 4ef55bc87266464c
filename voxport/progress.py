"""How stages tell the user what they are doing, without knowing whether a terminal is attached.

Stages call `progress.log(...)` for one-line events and wrap long loops in `progress.task(...)`,
advancing it once per unit of work. The CLI picks the renderer: rich bars on a terminal
(`RichProgress`), timed lines when piped (CI logs), nothing with `--quiet`.
Library callers get `NullProgress` by default.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO

from rich.console import Console
from rich.markup import escape

Advance = Callable[[int], None]


def _ignore_advance(n: int = 1) -> None:
    """The `Advance` of a task nobody watches."""


class Progress(Protocol):
    def log(self, message: str) -> None: ...

    def task(self, description: str, total: int | None = None) -> AbstractContextManager[Advance]: ...


class NullProgress:
    """Says nothing: the default for library calls and `--quiet`."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        yield _ignore_advance


class LineProgress:
    """Timed lines on a stream: readable in CI logs, where bars would print hundreds of frames."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"{time.perf_counter() - self.started:6.1f}s {message}", file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        begun = time.perf_counter()
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n

        yield advance
        count = f" ({done}/{total})" if total else ""
        self.log(f"{description}{count} done in {time.perf_counter() - begun:.1f}s")


class CallbackProgress(LineProgress):
    """Lines delivered to a callable (tests and the legacy `log=` parameter)."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__()
        self.callback = callback

    def log(self, message: str) -> None:
        self.callback(message)


class RichProgress:
    """A spinner (and a bar when the total is known) per running task, log lines printed above it.

    For terminals only: the display redraws in place, which a CI log would record as hundreds of
    frames (the CLI picks `LineProgress` there). Use it as a context manager so the live display is
    stopped (and the cursor restored) even when a stage raises; `task` also starts it on demand.
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bars

        self.console = console if console is not None else Console(stderr=True, highlight=False)
        self.started = time.perf_counter()
        self._bars = Bars(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._running = False

    def __enter__(self) -> RichProgress:
        self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _start(self) -> None:
        if not self._running:
            self._bars.start()
            self._running = True

    def _stop(self) -> None:
        if self._running:
            self._bars.stop()
            self._running = False

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        # escape: stage messages hold globs and lists such as "[1, 3]" or "[fp16]", not markup
        self._bars.console.print(
            f"[dim]{elapsed:6.1f}s[/dim] {escape(message)}", soft_wrap=True, highlight=False
        )

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        owns_display = not self._running
        self._start()
        begun = time.perf_counter()
        task_id = self._bars.add_task(escape(description), total=total)
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            self._bars.advance(task_id, n)

        try:
            yield advance
        finally:
            self._bars.remove_task(task_id)
            if owns_display:
                self._stop()
        count = f" ({done}/{total})" if total else ""
        self.log(f"{description}{count} done in {time.perf_counter() - begun:.1f}s")
