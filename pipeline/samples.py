"""Real speech for tests and the demo, made with espeak-ng and sox.

    python -m pipeline.samples OUT_DIR [-n 20] [--seed 0]

`synthesize` speaks a sentence with an espeak-ng voice/pitch/speed and converts it with sox to the
format given by the file suffix, at any rate, channel count and wav encoding. `make_corpus` writes
a small labelled corpus (speaker and speaking style per clip) with a `manifest.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

SENTENCES = [
    "I can't believe we finally made it here.",
    "Please leave me alone right now.",
    "What a wonderful surprise this is!",
    "The meeting has been moved to Thursday.",
    "I told you this would happen.",
    "Nobody listens to me anymore.",
    "We won the match, we actually won!",
    "Where did you put the keys?",
    "That was the worst day of my life.",
    "Let's get some coffee after work.",
    "Stop it, I mean it.",
    "Everything is going to be fine.",
]

# speaking style -> (espeak-ng pitch 0-99, words per minute)
STYLES = {"calm": (35, 140), "excited": (80, 210), "sad": (20, 110), "angry": (55, 190)}
VOICES = ["en", "en+f3", "en+m3", "en-us+f2"]
FORMATS = [".flac", ".wav", ".ogg", ".mp3"]

_ENCODINGS = {
    "pcm16": ["-e", "signed-integer", "-b", "16"],
    "pcm24": ["-e", "signed-integer", "-b", "24"],
    "pcm32": ["-e", "signed-integer", "-b", "32"],
    "float32": ["-e", "floating-point", "-b", "32"],
}


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: apt-get install -y espeak-ng sox libsox-fmt-all")
    return path


def synthesize(
    text: str,
    out_path: Path,
    *,
    voice: str = "en",
    pitch: int = 50,
    speed: int = 160,
    sample_rate: int = 16000,
    channels: int = 1,
    encoding: str | None = None,
) -> Path:
    """Speak `text` into `out_path` (.wav .flac .ogg .opus .mp3) at `sample_rate` Hz, `channels`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    espeak, sox = _require("espeak-ng"), _require("sox")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(
            [espeak, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        fmt: list[str] = []
        if encoding is not None:
            if out_path.suffix != ".wav":
                raise ValueError("encoding applies to .wav only")
            fmt = _ENCODINGS[encoding]
        # sox has no opus writer: convert to wav first, then encode with libsndfile
        target = Path(tmp) / "converted.wav" if out_path.suffix == ".opus" else out_path
        remix = ["remix", "1v0.9", "1v0.5"] if channels == 2 else ["channels", "1"]  # channels that differ
        # -D: no dither, so the output is deterministic
        subprocess.run(
            [sox, "-D", str(raw), *fmt, "-r", str(sample_rate), str(target), *remix],
            check=True,
            capture_output=True,
        )
        if target != out_path:
            import soundfile as sf

            data, sr = sf.read(str(target), dtype="float32")
            sf.write(str(out_path), data, sr, format="OGG", subtype="OPUS")
    return out_path


def make_corpus(out_dir: Path, n: int = 20, seed: int = 0) -> Path:
    """Write `n` clips in mixed formats and rates plus `manifest.jsonl`; returns the manifest path."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    rows = []
    styles = list(STYLES)
    for i in range(n):
        style = styles[i % len(styles)]
        voice = VOICES[(i // len(styles)) % len(VOICES)]
        pitch, speed = STYLES[style]
        text = SENTENCES[rng.randrange(len(SENTENCES))]
        suffix = FORMATS[i % len(FORMATS)]
        rate, ch = 16000, 1
        if i == 5:
            suffix, rate, ch = ".wav", 44100, 2
        elif i == 9:
            suffix, rate = ".wav", 8000
        name = f"clips/{i:03d}_{style}{suffix}"
        synthesize(
            text,
            out_dir / name,
            voice=voice,
            pitch=pitch + rng.randint(-5, 5),
            speed=speed,
            sample_rate=rate,
            channels=ch,
        )
        rows.append({"id": f"demo-{i:03d}", "path": name, "text": text, "speaker": voice, "style": style})
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_corpus(a.out_dir, a.n, a.seed))


if __name__ == "__main__":
    main()
