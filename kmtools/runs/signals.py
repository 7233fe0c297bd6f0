"""One SIGINT/SIGTERM catcher for long runs (attacks, geometry, tailoring).

A signal sets a flag that the run checks between batches (:func:`catch_signals`); the run
then saves what it has and raises :class:`Interrupted`, whose exit code is 128 + signal
(the shell's convention). A second signal stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kmtools.errors import KmtoolsError


def signal_name(signum: int) -> str:
    """``SIGTERM`` or ``SIGINT`` (the two signals a run catches)."""
    return "SIGTERM" if signum == signal.SIGTERM else "SIGINT"


class Interrupted(KmtoolsError):
    """SIGINT/SIGTERM during a run: what was done so far is saved; exit 128 + signal."""

    def __init__(self, signum: int, msg: str) -> None:
        super().__init__(msg)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class Signals:
    """The signals received so far; :meth:`check` turns the first into :class:`Interrupted`."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.received)

    def check(self, what: str | Callable[[], str] = "") -> None:
        """Raise :class:`Interrupted` if a signal came: ``interrupted by SIG… during WHAT``
        (``what`` may be a function, called only then, to name saved files)."""
        if not self.received:
            return
        signum = self.received[0]
        detail = what() if callable(what) else what
        raise Interrupted(signum, f"interrupted by {signal_name(signum)}" + (f" {detail}" if detail else ""))


@contextmanager
def catch_signals() -> Iterator[Signals]:
    """Record SIGINT/SIGTERM while the block runs (handlers restored after it). Only the main
    thread can install handlers; elsewhere the flag simply never rises."""
    got = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, _frame: Any) -> None:
        if got.received:
            raise KeyboardInterrupt
        got.received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
