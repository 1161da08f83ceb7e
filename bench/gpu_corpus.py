"""A mixed corpus for the GPU check, made without espeak-ng or sox (a bare GPU node has neither).

    python bench/gpu_corpus.py --pieces .gpu-bundle/pieces --out /tmp/corpus --files 900 --rows 20000

`--files` distinct clips of 1-20 s joined from the speech pieces bench/gpu_bundle.sh carries (the
espeak-ng sentences of pipeline.testing.samples), a third each 16 kHz mono wav, 44.1 kHz stereo flac and
48 kHz mono mp3, resampled by soxr and written by soundfile in `--workers` processes; then a manifest of
`--rows` distinct ids cycling over them (many rows per file: the job decodes each row anyway). Writes
OUT/manifest-ROWS.jsonl and OUT/corpus-ROWS.json (manifest, rows, files, nominal audio seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import CLIPS, FORMATS, clip_files, encode_soundfile, many_rows_manifest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pieces", type=Path, required=True, help="the bundle's pieces/ (0.wav ... 23.wav)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--files", type=int, default=900, help="distinct files, all formats together")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--clips", default="mixed", choices=sorted(CLIPS))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    # clip_files reads the pieces from <cache>/pieces (it would synthesise missing ones with espeak-ng)
    link = a.out / "pieces"
    if not link.exists():
        link.symlink_to(a.pieces.resolve(), target_is_directory=True)
    per_format = max(1, a.files // len(FORMATS))
    lo, hi = CLIPS[a.clips]
    files = clip_files(a.out, per_format, lo, hi, encode=encode_soundfile, workers=a.workers)
    manifest = a.out / f"manifest-{a.rows}.jsonl"
    audio_s = many_rows_manifest(manifest, files, a.rows)
    info = {"manifest": str(manifest), "rows": a.rows, "files": len(files), "audio_s": round(audio_s, 1)}
    (a.out / f"corpus-{a.rows}.json").write_text(json.dumps(info) + "\n")
    print(
        f"corpus: {a.rows} rows over {len(files)} files ({', '.join(FORMATS)}; {lo:g}-{hi:g} s), "
        f"{audio_s:.0f} s of audio, made in {time.time() - t0:.1f} s -> {manifest}"
    )


if __name__ == "__main__":
    main()
