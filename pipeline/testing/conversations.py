"""Conversations with known turns, for tests and the docs: who speaks when is known to the sample.

    from pipeline.testing.conversations import make_conversations
    convs = make_conversations(out_dir)        # out_dir/audio/<id>.<ext>, out_dir/rttm/<id>.rttm

Each recording lays spoken sentences (espeak-ng + sox via `synthesize`, one voice per speaker) at
known onsets on faint noise; where two turns overlap their samples add up. Every turn is trimmed to
its audible part and all times are multiples of 10 ms, so a turn's edges are whole samples at 16 kHz
and at 44.1 kHz and survive RTTM's millisecond precision unchanged. `CONVERSATIONS` holds:

- `call-0001`: 16 kHz mono wav, two speakers, the last turn overlapping the one before it by 0.61 s;
- `call-0002`: 44.1 kHz stereo wav (the channels differ in gain), two speakers, and a 20 ms turn
  (a backchannel a diariser cut short), shorter than the model's 25 ms minimum;
- `call-0003`: 16 kHz mono flac, two speakers, no overlap.

The RTTM is written as pyannote's `Annotation.write_rttm` writes it:
`SPEAKER <file-id> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>`, onset and duration with
three decimals, turns in time order.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .samples import SENTENCES, synthesize

AUDIBLE = 10 ** (-40 / 20)  # |x| above -40 dBFS counts as speech when trimming a clean clip
GRID_S = 0.01  # every onset and length is a multiple of this
NOISE_DBFS = -55.0
# speaker -> (espeak-ng voice, pitch, words per minute)
VOICES = {
    "SPEAKER_00": ("en+m3", 40, 150),
    "SPEAKER_01": ("en+f3", 70, 180),
}


@dataclass(frozen=True)
class Turn:
    recording: str
    speaker: str
    start_s: float
    end_s: float
    text: str  # "" for a turn that is not a sentence (a backchannel cut short)


@dataclass(frozen=True)
class Plan:
    """A recording to build: (speaker, onset s, sentence index or None for a `short_s` blip) turns."""

    id: str
    suffix: str
    sample_rate: int
    channels: int
    turns: tuple[tuple[str, float, int | None], ...]
    length_s: float
    short_s: float = 0.02


@dataclass(frozen=True)
class Conversation:
    id: str
    path: Path
    sample_rate: int
    channels: int
    turns: tuple[Turn, ...]


CONVERSATIONS = (
    Plan(
        "call-0001",
        ".wav",
        16000,
        1,
        (("SPEAKER_00", 0.5, 0), ("SPEAKER_01", 3.5, 1), ("SPEAKER_00", 6.2, 2), ("SPEAKER_01", 7.5, 3)),
        12.0,
    ),
    Plan(
        "call-0002",
        ".wav",
        44100,
        2,
        (("SPEAKER_01", 0.3, 4), ("SPEAKER_01", 2.5, None), ("SPEAKER_00", 3.4, 5), ("SPEAKER_01", 6.0, 6)),
        9.5,
    ),
    Plan("call-0003", ".flac", 16000, 1, (("SPEAKER_00", 0.4, 7), ("SPEAKER_01", 3.0, 8)), 6.0),
)


def make_conversations(out_dir: Path, plans: tuple[Plan, ...] = CONVERSATIONS) -> list[Conversation]:
    """Write `out_dir/audio/<id><suffix>` and `out_dir/rttm/<id>.rttm` for each plan."""
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    (out_dir / "rttm").mkdir(parents=True, exist_ok=True)
    convs = []
    for k, plan in enumerate(plans):
        signal, turns = _lay_out(plan, seed=k)
        gains = [1.0 - 0.4 * c for c in range(plan.channels)]
        path = out_dir / "audio" / f"{plan.id}{plan.suffix}"
        sf.write(str(path), np.stack([signal * g for g in gains], axis=1), plan.sample_rate, subtype="PCM_16")
        (out_dir / "rttm" / f"{plan.id}.rttm").write_text(rttm(turns), encoding="utf-8")
        convs.append(Conversation(plan.id, path, plan.sample_rate, plan.channels, turns))
    return convs


def rttm(turns: tuple[Turn, ...] | list[Turn]) -> str:
    """RTTM lines as pyannote's `write_rttm` writes them (channel 1, three decimals), in time order."""
    lines = []
    for t in sorted(turns, key=lambda t: (t.recording, t.start_s, t.end_s, t.speaker)):
        lines.append(
            f"SPEAKER {t.recording} 1 {t.start_s:.3f} {t.end_s - t.start_s:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        )
    return "".join(lines)


def overlap_s(turn: Turn, turns: tuple[Turn, ...] | list[Turn]) -> float:
    """Seconds of `turn` during which another speaker of the same recording speaks (union of them)."""
    others = sorted(
        (max(o.start_s, turn.start_s), min(o.end_s, turn.end_s))
        for o in turns
        if o.recording == turn.recording and o.speaker != turn.speaker
    )
    total, reach = 0.0, turn.start_s
    for a, b in others:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def _lay_out(plan: Plan, seed: int) -> tuple[np.ndarray, tuple[Turn, ...]]:
    sr = plan.sample_rate
    grid = round(GRID_S * sr)  # samples per 10 ms (160, 441)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(round(plan.length_s * sr)).astype(np.float32) * np.float32(
        10 ** (NOISE_DBFS / 20)
    )
    turns = []
    for speaker, onset, sentence in plan.turns:
        a = round(onset * sr)
        if sentence is None:  # a blip: a few ms of tone
            n = round(plan.short_s * sr)
            t = np.arange(n) / sr
            clip = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            text = ""
        else:
            clip = _sentence(SENTENCES[sentence], speaker, sr)
            clip = clip[: len(clip) // grid * grid]
            text = SENTENCES[sentence]
        if a + len(clip) > len(x):
            raise ValueError(f"{plan.id}: the turn at {onset} s runs past {plan.length_s} s")
        x[a : a + len(clip)] += clip
        turns.append(Turn(plan.id, speaker, round(onset, 3), round((a + len(clip)) / sr, 3), text))
    return x, tuple(turns)


def _sentence(text: str, speaker: str, sample_rate: int) -> np.ndarray:
    """`text` in `speaker`'s voice at `sample_rate`, trimmed to its first and last audible sample."""
    voice, pitch, speed = VOICES[speaker]
    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize(
            text,
            Path(tmp) / "s.wav",
            voice=voice,
            pitch=pitch,
            speed=speed,
            sample_rate=sample_rate,
            encoding="float32",
        )
        x, _ = sf.read(str(path), dtype="float32")
    loud = np.flatnonzero(np.abs(x) > AUDIBLE)
    return x[loud[0] : loud[-1] + 1]
