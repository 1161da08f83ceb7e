"""A small, learnable, IEMOCAP-shaped corpus of real speech, extracted once per test session with the
real job (jobs/extract.py, tiny random model, frames on); shared by test_downstream and test_queries.

Five sessions, one espeak-ng voice (speaker) each; four speaking styles that stand for the IEMOCAP
classes: sad (low, slow), neu (calm), hap/exc (high, fast; labelled hap or exc alternately, so the
exc->hap label map matters), ang (very high, fastest). Plus three rows the trainer must skip: one whose
audio is missing (an error row), one with no label, one labelled `fru` (outside the 4-class set).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.testing.samples import SENTENCES as SAMPLE_SENTENCES

ROOT = Path(__file__).resolve().parent.parent

# session -> (speaker, espeak-ng voice)
SPEAKERS = {1: ("Ses01F", "en"), 2: ("Ses02M", "en+m3"), 3: ("Ses03F", "en-us"), 4: ("Ses04M", "en+m7"),
            5: ("Ses05F", "en-gb-x-rp")}  # fmt: skip
# style -> (gold label, espeak-ng pitch 0-99, words per minute)
STYLES = {
    "sad": ("sad", 5, 110),
    "calm": ("neu", 35, 150),
    "happy": ("hap", 70, 190),
    "angry": ("ang", 99, 250),
}
CLIPS_PER_STYLE = 6  # per session: 5 x 4 x 6 = 120 usable clips
LABELS = ["ang", "hap", "neu", "sad"]
SENTENCES = SAMPLE_SENTENCES[:12]  # the corpus is defined by these twelve, in this order
USABLE = len(SPEAKERS) * len(STYLES) * CLIPS_PER_STYLE
SKIP_IDS = {
    "error": "Ses01F_missing_000",
    "no_label": "Ses01F_nolabel_000",
    "label_not_in_set": "Ses01F_fru_000",
}

_CACHE: dict[str, Path] = {}


def build_corpus(d: Path) -> Path:
    """Synthesize the clips and write `manifest.jsonl` (id, path, emotion, session, speaker)."""
    from pipeline.testing.samples import synthesize

    rows = []
    k = 0
    for session, (speaker, voice) in SPEAKERS.items():
        for style, (label, pitch, wpm) in STYLES.items():
            for j in range(CLIPS_PER_STYLE):
                text = SENTENCES[(k * 7) % len(SENTENCES)]
                name = f"wav/{speaker}/{speaker}_{style}_{j:03d}.wav"
                synthesize(
                    text,
                    d / name,
                    voice=voice,
                    pitch=max(0, min(99, pitch + 4 * (j % 3) - 4)),
                    speed=wpm + 10 * (j % 2),
                )
                if label == "hap" and j % 2:
                    label_j = "exc"
                else:
                    label_j = label
                rows.append(
                    {
                        "id": Path(name).stem,
                        "path": name,
                        "emotion": label_j,
                        "session": session,
                        "speaker": speaker,
                    }
                )
                k += 1
    synthesize(SENTENCES[0], d / "wav/Ses01F/Ses01F_nolabel_000.wav", voice="en", pitch=35, speed=150)
    synthesize(SENTENCES[1], d / "wav/Ses01F/Ses01F_fru_000.wav", voice="en", pitch=35, speed=150)
    rows += [
        {"id": SKIP_IDS["error"], "path": "wav/Ses01F/does_not_exist.wav", "emotion": "ang", "session": 1,
         "speaker": "Ses01F"},
        {"id": SKIP_IDS["no_label"], "path": "wav/Ses01F/Ses01F_nolabel_000.wav", "emotion": None, "session": 1,
         "speaker": "Ses01F"},
        {"id": SKIP_IDS["label_not_in_set"], "path": "wav/Ses01F/Ses01F_fru_000.wav", "emotion": "fru",
         "session": 1, "speaker": "Ses01F"},
    ]  # fmt: skip
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def extracted_output(tmp_path_factory, model_dir: Path) -> Path:
    """The corpus through jobs/extract.py (frames on); built once per test session. Needs Ray up
    (the `ray_session` fixture)."""
    key = str(tmp_path_factory.getbasetemp())
    if key in _CACHE:
        return _CACHE[key]
    from pipeline.cli import extract

    d = tmp_path_factory.mktemp("downstream_corpus")
    manifest = build_corpus(d)
    out = d / "out"
    cfg = d / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n"
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n  batch_seconds: 8\n"
        f"output:\n  path: {out}\n  frames: true\n"
    )
    rc = extract.main(["--config", str(cfg)])
    assert rc == 0, f"extraction failed with exit code {rc}"
    _CACHE[key] = out
    return out
