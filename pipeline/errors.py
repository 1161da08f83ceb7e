"""Walking exception chains, one rule for the whole pipeline.

A failure reaches the driver wrapped: Ray's `RayTaskError` keeps the remote exception in `.cause`
(its `__cause__` and `__context__` do not survive pickling), and our own code raises readable errors
`from` the library's. Every question about "what really went wrong" (is it transient, is it a bad
manifest, did a worker die, what to print) walks the same chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

E = TypeVar("E", bound=BaseException)

MAX_DEPTH = 10


def causes(e: BaseException | None) -> Iterator[BaseException]:
    """`e`, then what caused it, outermost first: Ray's `.cause`, else `__cause__`, else
    `__context__` (also after `raise ... from None`: the context is still what happened). Stops at
    a cycle or after MAX_DEPTH links."""
    seen: list[BaseException] = []
    while e is not None and len(seen) < MAX_DEPTH and not any(e is s for s in seen):
        seen.append(e)
        yield e
        inner = getattr(e, "cause", None)
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)


def find(e: BaseException | None, kinds: type[E] | tuple[type[E], ...]) -> E | None:
    """The first exception in `e`'s chain that is one of `kinds`, or None."""
    return next((x for x in causes(e) if isinstance(x, kinds)), None)


class DeviceUnusable(RuntimeError):
    """A model actor holds a Ray GPU but PyTorch cannot use any CUDA device there (a driver older than
    the installed PyTorch needs, a build without CUDA, devices hidden from the process). No restart
    fixes that: the job ends with this message (exit 2) instead of burning its restarts. Raised by
    the model stage (`predictor.py`); defined here, where the driver reads it without importing torch."""
