"""Ctrl-C and SIGTERM during training: a step or an epoch's bookkeeping runs to its end, then
the run saves and stops."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopGuard:
    """SIGINT/SIGTERM inside a ``deferring`` block ask for a stop at its end; elsewhere they
    interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False  # inside a step or the end-of-epoch bookkeeping
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested or not self.busy:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """A block that a signal does not cut short. A second signal does: ``busy`` then stays
        set, since the model may be half updated and must not be saved."""
        self.busy, interrupted = True, False
        try:
            yield
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.busy = interrupted
