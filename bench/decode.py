"""Decode cost per audio-second: MELD-style mp4 (H.264 + AAC 48 kHz stereo) vs the same audio as wav.

    python bench/decode.py [--clips 40] [--rounds 5] [--work outputs/bench-decode]

Makes `--clips` clips of 2-6 s of espeak-ng speech, each as an mp4 (640x360 25 fps H.264 noisy test
picture at 1.5 Mbit/s plus AAC 48 kHz stereo, made by the ffmpeg CLI), a 48 kHz stereo 16-bit wav and a 16 kHz mono 16-bit
wav of the same audio. Each round calls `pipeline.audio.decode` on every file's bytes (read beforehand)
in one thread, one format after another, the order rotating per round (this box is shared and noisy);
CPU time is the process's. Reports the median over rounds of audio-s per CPU-s and CPU-ms per audio-s.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: what a Ray decode task gets

import argparse
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

from common import ROOT, machine

FORMATS = {
    "mp4 (H.264 + AAC 48 kHz stereo)": ("mp4", ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "1500k",
                                                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"]),
    "wav 48 kHz stereo 16-bit": ("48k.wav", ["-map", "1:a", "-c:a", "pcm_s16le", "-ar", "48000", "-ac", "2"]),
    "wav 16 kHz mono 16-bit": ("16k.wav", ["-map", "1:a", "-c:a", "pcm_s16le", "-ar", "16000", "-ac", "1"]),
}  # fmt: skip
# a noisy picture, so the video stream has MELD-like bytes (~1.5 Mbit/s) for the demuxer to skip
VIDEO = ["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25,noise=alls=30:allf=t"]


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def make_clips(work: Path, n: int, seed: int = 0) -> list[tuple[str, float]]:
    """n clips of 2-6 s (espeak-ng sentences, looped to length) in every format; cached in `work`."""
    from pipeline.testing.samples import SENTENCES, STYLES, VOICES, synthesize

    rng = random.Random(seed)
    clips = []
    for i in range(n):
        stem, seconds = f"{i:03d}", round(rng.uniform(2, 6), 2)
        clips.append((stem, seconds))
        if all((work / f"{stem}.{ext}").exists() for ext, _ in FORMATS.values()):
            continue
        style = list(STYLES)[i % len(STYLES)]
        pitch, speed = STYLES[style]
        speech = synthesize(SENTENCES[i % len(SENTENCES)], work / "speech" / f"{stem}.wav", voice=VOICES[i % 4],
                            pitch=pitch, speed=speed, sample_rate=48000, channels=2)  # fmt: skip
        for ext, options in FORMATS.values():
            looped = ["-stream_loop", "-1", "-i", speech, "-t", str(seconds)]
            ffmpeg(*VIDEO, *looped, "-shortest", *options, work / f"{stem}.{ext}")
    return clips


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-decode")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)

    import torch

    from pipeline.audio import decode

    torch.set_num_threads(1)
    clips = make_clips(a.work, a.clips)
    data = {label: [(a.work / f"{stem}.{ext}").read_bytes() for stem, _ in clips]
            for label, (ext, _) in FORMATS.items()}  # fmt: skip
    audio_s = {label: sum(decode(d).duration_s for d in files) for label, files in data.items()}  # warm-up
    cpu: dict[str, list[float]] = {label: [] for label in FORMATS}
    labels = list(FORMATS)
    for r in range(a.rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            t0 = time.process_time()
            for d in data[label]:
                decode(d)
            cpu[label].append(time.process_time() - t0)

    print(json.dumps({**machine(), "date": time.strftime("%Y-%m-%d"), "clips": a.clips, "rounds": a.rounds}))
    print("| format | MB per audio-min | audio-s per CPU-s | CPU-ms per audio-s |")
    print("|---|---|---|---|")
    for label, files in data.items():
        median = statistics.median(cpu[label])
        mb_per_min = sum(map(len, files)) / 2**20 / audio_s[label] * 60
        print(
            f"| {label} | {mb_per_min:.2f} | {audio_s[label] / median:.0f} | {1000 * median / audio_s[label]:.2f} |"
        )
    print(
        f"({sum(audio_s.values()) / len(audio_s):.1f} audio-s per format per round; median of {a.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
