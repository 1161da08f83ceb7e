"""Real speech for tests and the demo, made with espeak-ng and sox.

    python -m pipeline.testing.samples OUT_DIR [-n 20] [--seed 0]

`synthesize` speaks a sentence with an espeak-ng voice/pitch/speed and converts it with sox to the
format given by the file suffix (.wav .flac .ogg .opus .mp3), at any rate, channel count and wav
encoding. `make_corpus` writes a small corpus of short clips, each with a speaker (espeak-ng voice)
and a speaking style (a pitch/speed combination), plus a `manifest.jsonl`. Output is deterministic for
given arguments (no dither). Needs `apt-get install -y espeak-ng sox libsox-fmt-all`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import soundfile as sf

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
    "The train leaves at seven.",
    "How could you do this to me?",
    "I miss the old house.",
    "This is the best news all year!",
    "Get out of my office.",
    "The report is on your desk.",
    "I don't want to talk about it.",
    "We are going to the beach tomorrow!",
    "You never keep your promises.",
    "It is raining again today.",
    "Thank you so much for coming!",
    "I waited for hours and nobody came.",
]

# speaking style -> (espeak-ng pitch 0-99, speed in words per minute)
STYLES: dict[str, tuple[int, int]] = {
    "calm": (35, 140),
    "excited": (80, 210),
    "sad": (20, 120),
    "angry": (55, 190),
}
VOICES = ["en", "en+f3", "en+m3", "en-us+f2"]
FORMATS = [".flac", ".wav", ".ogg", ".mp3"]
# clip index -> (suffix, sample rate, channels): a few clips away from 16 kHz mono
VARIANTS = {5: (".wav", 44100, 2), 9: (".wav", 8000, 1), 13: (".opus", 48000, 1), 18: (".flac", 22050, 1)}

SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3"}
OPUS_RATES = {8000, 12000, 16000, 24000, 48000}
_ENCODINGS = {
    "pcm16": ["-e", "signed-integer", "-b", "16"],
    "pcm24": ["-e", "signed-integer", "-b", "24"],
    "pcm32": ["-e", "signed-integer", "-b", "32"],
    "float32": ["-e", "floating-point", "-b", "32"],
}
_INSTALL = "apt-get install -y espeak-ng sox libsox-fmt-all"


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
    """Speak `text` into `out_path` (format from its suffix) at `sample_rate` Hz with `channels`.

    `encoding` (wav only): None (sox's default, 16-bit), "pcm16", "pcm24", "pcm32" or "float32".
    Channel k is the speech scaled by its own gain (0.9 down to 0.5), so channels differ.
    """
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unsupported output suffix {suffix!r}; use one of {sorted(SUFFIXES)}")
    if encoding is not None and (suffix != ".wav" or encoding not in _ENCODINGS):
        raise ValueError(f"encoding {encoding!r}: only for .wav, one of {sorted(_ENCODINGS)}")
    if suffix == ".opus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"opus needs a sample rate in {sorted(OPUS_RATES)}, not {sample_rate}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, not {channels}")
    espeak, sox = _require("espeak-ng"), _require("sox")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        speech = Path(tmp) / "speech.wav"  # espeak-ng writes 22.05 kHz mono 16-bit
        _run([espeak, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(speech), text])
        # sox has no opus writer: it writes a float wav that libsndfile then encodes
        target = Path(tmp) / "converted.wav" if suffix == ".opus" else out_path
        if suffix == ".opus":
            encoding = "float32"
        fmt = _ENCODINGS[encoding] if encoding else []
        gains = [0.9 - 0.4 * k / max(channels - 1, 1) for k in range(channels)]
        remix = ["remix", *(f"1v{g:.3f}" for g in gains)]
        # -D: no dither, so the output is deterministic
        _run([sox, "-D", str(speech), *fmt, "-r", str(sample_rate), str(target), *remix])
        if suffix == ".opus":
            data, sr = sf.read(str(target), dtype="float32")
            sf.write(str(out_path), data, sr, format="OGG", subtype="OPUS")
    if suffix in (".ogg", ".opus"):
        out_path.write_bytes(_fixed_ogg_serial(out_path.read_bytes()))
    return out_path


def make_corpus(
    out_dir: Path, n: int = 20, seed: int = 0, styles: Mapping[str, tuple[int, int]] = STYLES
) -> Path:
    """Write `n` clips under `out_dir/clips` and `out_dir/manifest.jsonl`; returns the manifest path.

    Clip i has style i mod len(styles) (pitch jittered by +-5), a voice that changes every len(styles)
    clips, a different sentence while sentences last, and a format cycling through flac/wav/ogg/mp3,
    16 kHz mono except for `VARIANTS`. Manifest columns: id, path (relative to out_dir), text, speaker,
    style.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    names = list(styles)
    sentences = rng.sample(SENTENCES, len(SENTENCES))
    rows = []
    for i in range(n):
        style = names[i % len(names)]
        voice = VOICES[(i // len(names)) % len(VOICES)]
        pitch, speed = styles[style]
        text = sentences[i % len(sentences)]
        suffix, rate, channels = VARIANTS.get(i, (FORMATS[i % len(FORMATS)], 16000, 1))
        path = f"clips/{i:03d}_{style}{suffix}"
        synthesize(
            text,
            out_dir / path,
            voice=voice,
            pitch=min(99, max(0, pitch + rng.randint(-5, 5))),
            speed=speed,
            sample_rate=rate,
            channels=channels,
        )
        rows.append({"id": f"demo-{i:03d}", "path": path, "text": text, "speaker": voice, "style": style})
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed (needed to generate speech): {_INSTALL}")
    return path


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tool = Path(cmd[0]).name
        raise RuntimeError(
            f"{tool} failed (exit {proc.returncode}): {proc.stderr.strip()} "
            f"(missing format support? {_INSTALL})"
        )


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7 if c & 0x80000000 else c << 1) & 0xFFFFFFFF
        table.append(c)
    return table


_OGG_CRC = _crc_table()  # Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0


def _fixed_ogg_serial(data: bytes, serial: int = 1) -> bytes:
    """Ogg pages with a fixed stream serial number (encoders pick a random one) and fresh CRCs."""
    out = bytearray(data)
    pos = 0
    while pos + 27 <= len(out) and out[pos : pos + 4] == b"OggS":
        nseg = out[pos + 26]
        end = pos + 27 + nseg + sum(out[pos + 27 : pos + 27 + nseg])  # header, lacing table, body
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = bytes(4)  # the CRC is computed with its own field zeroed
        crc = 0
        for b in out[pos:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ b]
        out[pos + 22 : pos + 26] = crc.to_bytes(4, "little")
        pos = end
    return bytes(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("-n", type=int, default=20, help="number of clips (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed for sentences and pitch jitter (default 0)")
    a = p.parse_args()
    print(make_corpus(a.out_dir, a.n, a.seed))


if __name__ == "__main__":
    main()
