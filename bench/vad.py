"""Silero VAD (`pipeline.vad.speech_segments`) on a generated long recording: time, memory, segments.

    python bench/vad.py [--minutes 30] [--seed 0]

The recording is espeak-ng sentences (tests/speech.py) with random 1-3 s pauses and -50 dBFS noise,
written as a 16 kHz wav. A child process reads it, resets its peak RSS (/proc/self/clear_refs), runs
the VAD and reports the wall and CPU time and the peak RSS above the RSS it had with the signal
loaded; once as the job runs it (windows scored in batches) and once with silero called on one window
at a time (how `pipeline.vad` scored them before), side by side. The parent compares the segments
with the true sentence spans and with each other.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from common import ROOT, machine


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(wav: Path, streamed: bool) -> dict:
    """Runs in the child: VAD on `wav`, with time and peak RSS above the loaded signal."""
    import torch

    from pipeline import vad
    from pipeline.config import VadConfig
    from pipeline.vad import speech_segments

    if streamed:  # silero's model called window by window, as get_speech_timestamps does
        vad._parts = lambda model, torch: None

    x, sr = sf.read(str(wav), dtype="float32")
    speech_segments(np.zeros(16000, np.float32), VadConfig())  # load the model outside the measurement
    threads = torch.get_num_threads()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    segments = speech_segments(x, VadConfig(), sr)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "audio_s": len(x) / sr,
        "signal_mb": round(x.nbytes / 1e6, 1),
        "extra_peak_rss_mb": round((_status_kb("VmHWM") - base) / 1024, 1),
        "threads_before_after": [threads, torch.get_num_threads()],
        "segments": segments,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.streamed)))
        return

    from tests.speech import long_recording, sentence_clips

    rng = random.Random(a.seed)
    clips = sentence_clips(24)
    order, gaps, total = [], [rng.uniform(1, 3)], 0.0
    while total < a.minutes * 60:
        order.append(clips[rng.randrange(len(clips))])
        gaps.append(rng.uniform(1, 3))
        total += len(order[-1]) / 16000 + gaps[-1]
    rec = long_recording(order, gaps, 16000, seed=a.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(str(wav), rec.samples, 16000, subtype="PCM_16")
        del rec.samples
        for how in ("batched", "window by window"):
            flag = ["--streamed"] if how != "batched" else []
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(wav), *flag],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode != 0:
                sys.exit(out.stderr)
            results[how] = json.loads(out.stdout)
    print(machine())
    truth = rec.spans_at(16000)
    same = results["batched"]["segments"] == results["window by window"]["segments"]
    for how, r in results.items():
        segments = r.pop("segments")
        inside = [next(((s, e) for s, e in segments if s < te and ts < e), None) for ts, te in truth]
        misses = [
            f"{ts / 16000:.2f}-{te / 16000:.2f} s vs {seg[0] / 16000:.2f}-{seg[1] / 16000:.2f} s"
            if seg
            else "none"
            for (ts, te), seg in zip(truth, inside, strict=True)
            if seg is None or not (seg[0] <= ts and te <= seg[1])
        ]
        covered = len(truth) - len(misses)
        print(
            f"{how}: {r['audio_s'] / 60:.1f} min recording ({r['signal_mb']} MB float32): VAD {r['seconds']} s, "
            f"{r['cpu_s']} CPU-s = {r['audio_s'] / max(r['cpu_s'], 1e-9):.0f} audio-s per CPU-s, "
            f"peak RSS +{r['extra_peak_rss_mb']} MB over the loaded signal, torch threads "
            f"{r['threads_before_after']}; {len(segments)} segments for {len(truth)} sentences, {covered} "
            f"sentences inside one segment"
        )
        for m in misses:
            print(f"  not inside one segment: sentence {m} (first overlapping segment)")
    print(f"segments identical batched vs window by window: {same}")


if __name__ == "__main__":
    main()
