"""The CPU stage: fetch each row's audio, decode it to 16 kHz mono, or record why not.

Adds `error`, `duration_s`, `sample_rate`, `channels` and `waveform` (large_list<float32>, null on
error) to a block of manifest rows. No exception escapes for a bad row: every failure becomes
`error = "stage: ExceptionType: message"` with the file named in the message.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from .audio import decode
from .storage import Storage
from .writer import DECODE_TIME_COLUMN


def decode_batch(batch: pa.Table, storage: Storage) -> pa.Table:
    t0 = time.perf_counter()
    n = batch.num_rows
    paths = batch["path"].to_pylist()
    errors: list[str | None] = [None] * n
    duration = np.zeros(n, np.float32)
    rate = np.zeros(n, np.int32)
    channels = np.zeros(n, np.int32)
    known = np.zeros(n, bool)  # sample_rate/channels known
    clips: list[np.ndarray | None] = [None] * n
    for i, path in enumerate(paths):
        if not path:
            errors[i] = "input: ValueError: the manifest row has no audio path"
            continue
        try:
            data = storage.read_bytes(path)
        except Exception as e:  # noqa: BLE001 - any fetch failure is this row's error
            errors[i] = f"fetch: {type(e).__name__}: {_msg(e, path)}"
            continue
        try:
            audio = decode(data, name=path)
        except Exception as e:  # noqa: BLE001
            errors[i] = f"decode: {type(e).__name__}: {path}: {e}"
            continue
        clips[i] = audio.samples
        duration[i] = audio.duration_s
        rate[i] = audio.sample_rate
        channels[i] = audio.channels
        known[i] = True

    lengths = np.array([0 if c is None else len(c) for c in clips], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate([c for c in clips if c is not None]) if known.any() else np.zeros(0, np.float32)
    wave = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), pa.array(values, pa.float32()), mask=pa.array(~known)
    )
    out = batch
    for name, arr in (
        ("error", pa.array(errors, pa.string())),
        ("duration_s", pa.array(duration, pa.float32(), mask=~known)),
        ("sample_rate", pa.array(rate, pa.int32(), mask=~known)),
        ("channels", pa.array(channels, pa.int32(), mask=~known)),
        ("waveform", wave),
        (DECODE_TIME_COLUMN, pa.array(np.full(n, (time.perf_counter() - t0) / max(n, 1)), pa.float64())),
    ):
        out = out.append_column(name, arr)
    return out


def _msg(e: Exception, path: str) -> str:
    s = str(e).strip() or repr(e)
    return s if path in s else f"{path}: {s}"
