"""SIGINT/SIGTERM for the driver: stop cleanly once, exit hard on the second signal.

    with on_interrupt("stopped; rerun the same command to resume") as stop:
        run()                      # a signal raises Interrupted here, in the main thread
        with stop.shield():        # ... except inside a shield: there it waits for the exit
            commit()

Exit codes follow the shell's 128 + signal number: 130 for SIGINT, 143 for SIGTERM. `ray.init()`
installs its own SIGTERM handler: enter the block after it, or call `cluster.init_ray` inside it,
which puts the block's handler back (Ray's is restored when the block ends).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread on the first SIGINT/SIGTERM. A BaseException, like
    KeyboardInterrupt, so that `except Exception` in job code does not swallow it."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name, self.exit_code = signal_name, exit_code


class Stop:
    """The state of one `on_interrupt` block."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # set by the first signal
        self.exit_code = 0
        self._shields = 0
        # the enclosing block's Stop (e2v-extract's around run(), run()'s around each attempt): the
        # first signal is its first signal too, so that a second one during the clean-up after this
        # block (the lease, ray.shutdown) exits at once instead of interrupting that clean-up
        self._outer: Stop | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @contextmanager
    def shield(self) -> Iterator[None]:
        """A region a signal must not cut in half (a commit by rename): a signal inside it is
        raised as `Interrupted` when the outermost shield ends."""
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1
            # also when the region ends in an error (a commit that failed): the signal must not be
            # dropped with it, or the caller would carry on (restart the pipeline) after a SIGTERM
            if self._shields == 0 and self.requested:
                raise Interrupted(self.signal_name, self.exit_code)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            os.write(2, f"\n{name} again while stopping: exiting now without cleanup\n".encode())
            os._exit(128 + signum)
        self.signal_name, self.exit_code = name, 128 + signum
        outer = self._outer
        while outer is not None and not outer.requested:
            outer.signal_name, outer.exit_code = name, 128 + signum
            outer = outer._outer
        if self._shields == 0:
            raise Interrupted(name, self.exit_code)


@contextmanager
def on_interrupt(message: str | None = None, *, file: TextIO | None = None) -> Iterator[Stop]:
    """Install SIGINT/SIGTERM handlers for the block and restore the previous ones after it.

    The first signal raises `Interrupted` in the main thread; cleanup inside the block (finally,
    except) still runs under these handlers, so a second signal exits at once (os._exit). With
    `message`, an `Interrupted` leaving the block prints that one line (`{signal}` is replaced by the
    signal's name) to `file` (stderr) and exits with its code; without, it propagates to the caller.
    Outside the main thread (where Python cannot install handlers) it only yields."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {s: signal.signal(s, stop._handle) for s in SIGNALS}
    stop._outer = next(
        (h.__self__ for h in previous.values() if isinstance(getattr(h, "__self__", None), Stop)), None
    )
    try:
        yield stop
    except Interrupted as e:
        if message is None:
            raise
        print(message.replace("{signal}", e.signal_name), file=file or sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
