"""Run model rows one at a time in a separate process, so that a row that kills its process (a
crash in native code, an OOM kill) costs that process and not the model actor (see poison.py).

The parent (`Isolated`) starts `python -m pipeline.isolate`, which loads the model with the actor's
own constructor arguments and answers one row at a time over its stdin/stdout: length-prefixed
pickles. A child that dies on a row is replaced for the next one.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from typing import IO, Any

import numpy as np

_LEN = struct.Struct("!Q")


class ChildDied(RuntimeError):
    """The separate process ended while it ran a row."""


def _send(f: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def _recv(f: IO[bytes]) -> Any:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


class Isolated:
    """A child process holding its own copy of the model; `run()` one row at a time."""

    def __init__(self, model_kwargs: dict[str, Any]):
        import pipeline

        root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.isolate"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        try:
            _send(self._proc.stdin, model_kwargs)
            ready = _recv(self._proc.stdout)
        except (EOFError, BrokenPipeError):
            ready = None
        if ready != "ready":
            self.close()
            raise RuntimeError(
                f"could not start a separate model process to run suspect rows in (exit code {self._proc.returncode})"
            )

    def run(self, row_id: str, path: str | None, clip: np.ndarray) -> Any:
        """The row's result (a RowResult, or the exception the model raised on it); ChildDied if the
        process ended on it."""
        try:
            _send(self._proc.stdin, (row_id, path, clip))
            kind, value = _recv(self._proc.stdout)
        except (EOFError, BrokenPipeError, OSError):
            self.close()
            raise ChildDied(f"exit code {self._proc.returncode}") from None
        if kind == "error":
            name, message = value
            return type(name, (RuntimeError,), {})(message)  # the model's error, under its own name
        return value

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def main() -> None:
    """The child: load the model, then answer rows until stdin closes."""
    from .poison import maybe_crash
    from .predictor import EmotionPredictor

    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel; anything printed goes to stderr
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    maybe_crash("isolate", "start")  # a test seam: a child that cannot start
    predictor = EmotionPredictor(**_recv(inp))
    _send(out, "ready")
    while True:
        try:
            row_id, path, clip = _recv(inp)
        except EOFError:
            return
        maybe_crash("model", path or row_id)
        try:
            (result,) = predictor.predict([clip])
        except Exception as e:  # noqa: BLE001 - the row's error, as predict reports per clip
            result = e
        if isinstance(result, Exception):
            _send(out, ("error", (type(result).__name__, str(result))))
        else:
            _send(out, ("ok", result))


if __name__ == "__main__":
    main()
