"""Resampling to 16 kHz: the job's cached torchaudio kernel against `torchaudio.functional.resample`,
which rebuilds the kernel on every call. Interleaved rounds, median; the samples are identical.

    python bench/resample.py [--seconds 0.5] [--rates 44100,48000,22050] [--calls 200] [--rounds 5]
"""

import argparse
import statistics
import time

import numpy as np
import torch
import torchaudio

from pipeline.audio import to_mono_16k


def per_call_ms(fn, x: np.ndarray, rate: int, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x, rate)
    return 1e3 * (time.perf_counter() - t0) / calls


def functional(x: np.ndarray, rate: int) -> torch.Tensor:
    return torchaudio.functional.resample(torch.from_numpy(x), rate, 16000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--rates", default="44100,48000,22050")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| source rate | clip s | cached kernel, ms/call | functional, ms/call | speed-up |")
    print("|---|---|---|---|---|")
    for rate in (int(r) for r in args.rates.split(",")):
        x = np.random.default_rng(rate).standard_normal(int(rate * args.seconds)).astype(np.float32)
        assert np.array_equal(
            to_mono_16k(x, rate), torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
        )
        cached, plain = [], []
        for _ in range(args.rounds):
            cached.append(per_call_ms(to_mono_16k, x, rate, args.calls))
            plain.append(per_call_ms(functional, x, rate, args.calls))
        c, f = statistics.median(cached), statistics.median(plain)
        print(f"| {rate} | {args.seconds} | {c:.3f} | {f:.3f} | {f / c:.1f}x |")


if __name__ == "__main__":
    main()
