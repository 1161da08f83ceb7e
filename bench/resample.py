"""Resamplers to 16 kHz, speed and quality side by side: libsoxr (`soxr`, the job's default), FFmpeg's
swresample through PyAV, and torchaudio (the job's cached kernel, FunASR's numbers).

    python bench/resample.py [--rates 8000,22050,44100,48000] [--seconds 0.5,10] [--rounds 7]

Speed: CPU ms per audio-second (process time, one thread), the resamplers interleaved per round,
median of `--rounds`. Quality, against numpy's own 16 kHz tone (no resampler involved): SNR of
440 Hz / 3 kHz / 7 kHz tones away from the ends, and the level left of a 9.5 kHz tone (above
16 kHz's Nyquist: it should vanish, not fold back). The job's torchaudio kernel is asserted equal
to `torchaudio.functional.resample` bit for bit.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: what a Ray decode task gets

import argparse
import json
import math
import statistics
import time

import av
import numpy as np
import torch
import torchaudio
from common import machine

from pipeline.audio import to_mono_16k

EDGE = 400


def swresample(x: np.ndarray, rate: int) -> np.ndarray:
    """FFmpeg's swresample at PyAV's defaults, one call per clip (as a decoder would use it)."""
    r = av.AudioResampler(format="flt", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    parts = [f.to_ndarray()[0] for f in [*r.resample(frame), *r.resample(None)]]
    return np.concatenate(parts)[: math.ceil(len(x) * 16000 / rate)]


RESAMPLERS = {
    "soxr HQ (default)": lambda x, rate: to_mono_16k(x, rate, "soxr"),
    "swresample (PyAV)": swresample,
    "torchaudio (FunASR's)": lambda x, rate: to_mono_16k(x, rate, "torchaudio"),
}


def tone(freq: float, rate: int, seconds: float = 2.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def quality(fn, rate: int) -> dict:
    out = {}
    for freq in (440.0, 3000.0, 7000.0):
        if freq >= rate / 2:
            continue
        y = fn(tone(freq, rate), rate)
        want = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(y)) / 16000)
        err = y[EDGE:-EDGE] - want[EDGE:-EDGE]
        out[f"snr_{freq:g}"] = round(10 * math.log10(np.mean(want[EDGE:-EDGE] ** 2) / np.mean(err**2)), 1)
    if rate > 19000:
        y = fn(tone(9500.0, rate), rate)[EDGE:-EDGE]
        out["alias_9500_db"] = round(20 * math.log10(np.sqrt(np.mean(y**2)) / (0.5 / math.sqrt(2))), 1)
    return out


def cpu_ms_per_audio_s(fn, x: np.ndarray, rate: int, calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn(x, rate)
    return 1e3 * (time.process_time() - t0) / calls / (len(x) / rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="8000,22050,44100,48000")
    p.add_argument("--seconds", default="0.5,10")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--audio-s", type=float, default=20.0, help="audio seconds per timing")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps({**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    rates = [int(r) for r in args.rates.split(",")]
    for rate in rates:
        x = np.random.default_rng(rate).standard_normal(rate).astype(np.float32)
        want = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
        assert np.array_equal(to_mono_16k(x, rate, "torchaudio"), want)

    print("\n| source rate | resampler | SNR 440 Hz | SNR 3 kHz | SNR 7 kHz | 9.5 kHz left |")
    print("|---|---|---|---|---|---|")
    for rate in rates:
        for name, fn in RESAMPLERS.items():
            q = quality(fn, rate)
            cells = [
                f"{q[k]} dB" if k in q else "-" for k in ("snr_440", "snr_3000", "snr_7000", "alias_9500_db")
            ]
            print(f"| {rate} | {name} | {' | '.join(cells)} |")

    seconds = [float(s) for s in args.seconds.split(",")]
    print(
        "\n| source rate | clip s | "
        + " | ".join(f"{n}, CPU ms/audio-s" for n in RESAMPLERS)
        + " | soxr vs torchaudio |"
    )
    print("|---|---|" + "---|" * len(RESAMPLERS) + "---|")
    for rate in rates:
        for s in seconds:
            x = np.random.default_rng(rate).standard_normal(int(rate * s)).astype(np.float32)
            calls = max(1, round(args.audio_s / s))
            times: dict[str, list[float]] = {n: [] for n in RESAMPLERS}
            for fn in RESAMPLERS.values():
                fn(x, rate)  # warm: kernels, libraries
            for r in range(args.rounds):
                order = list(RESAMPLERS.items())
                order = order[r % len(order) :] + order[: r % len(order)]
                for name, fn in order:
                    times[name].append(cpu_ms_per_audio_s(fn, x, rate, calls))
            med = {n: statistics.median(t) for n, t in times.items()}
            ratio = med["torchaudio (FunASR's)"] / med["soxr HQ (default)"]
            print(
                f"| {rate} | {s:g} | "
                + " | ".join(f"{med[n]:.3f}" for n in RESAMPLERS)
                + f" | {ratio:.1f}x |"
            )


if __name__ == "__main__":
    main()
