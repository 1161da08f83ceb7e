"""The job's decode stage against a tight loop on the same files, per resampler, one thread.

    python bench/decode_stage.py [--clips mixed|short] [--distinct 12] [--rounds 5] [--profile]

Corpus: bench/common.py's clips (16 kHz mono wav, 44.1 kHz stereo flac, 48 kHz mono mp3; `mixed`
1-20 s, `short` 0.5 s), a jsonl manifest over them. Measured in this process, CPU time, the variants
interleaved per round, median of `--rounds`:

- tight loop: read the file's bytes, `soundfile.read` float32, mean over channels, `soxr.resample`
  (HQ) for other rates: no pipeline code at all (the issue's reference loop);
- `audio.decode`: the job's per-file function on the same bytes (the resampler as named);
- decode stage: `prepare.prepare_block` on the manifest's normalised blocks as a decode task gets
  them (fetch through `Storage`, decode, Arrow output block), the resampler as named.

`--profile` prints the stage's top functions by own time (cProfile) for the default resampler.
Ray's own per-task cost is not in here: bench/feed.py measures the whole job per process role.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: what a Ray decode task gets

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import time
from pathlib import Path

import numpy as np
from common import CLIPS, ROOT, clip_files, machine, many_rows_manifest


def tight_loop(paths: list[Path]) -> float:
    """-> audio seconds at 16 kHz."""
    import soundfile as sf
    import soxr

    n = 0
    for p in paths:
        x, sr = sf.read(io.BytesIO(p.read_bytes()), dtype="float32", always_2d=True)
        mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
        if sr != 16000:
            mono = soxr.resample(mono, sr, 16000, quality="HQ")
        n += len(mono)
    return n / 16000


def audio_decode(paths: list[Path], resampler: str) -> float:
    from pipeline.audio import decode

    return sum(len(decode(p.read_bytes(), p.name, resampler=resampler).samples) for p in paths) / 16000


def stage(blocks, storage, resampler: str) -> float:
    from pipeline.prepare import prepare_block

    n = 0.0
    for b in blocks:
        for out in prepare_block(b, storage=storage, resampler=resampler):
            n += float(np.sum(out["duration_s"].to_numpy(zero_copy_only=False)))
    return n


def manifest_blocks(path: Path, block_rows: int):
    from pipeline.config import InputConfig, StorageConfig
    from pipeline.manifest import Piece, count_rows, discover, read_units
    from pipeline.storage import Storage

    storage = Storage.from_config(StorageConfig())
    icfg = InputConfig(manifest=str(path))
    (source,) = discover(icfg, storage)
    rows = count_rows(source, icfg, storage).rows
    whole = Piece(0, 0, math.ceil(rows / icfg.rows_per_unit), 0, rows)  # the whole source, as one read
    blocks = list(read_units(source, icfg, storage, piece=whole, skip=None, block_rows=block_rows))
    return blocks, storage


def cpu_of(fn, *args) -> tuple[float, float]:
    t0 = time.process_time()
    audio_s = fn(*args)
    return time.process_time() - t0, audio_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", choices=list(CLIPS), default="mixed")
    p.add_argument("--distinct", type=int, default=12, help="distinct clips per format")
    p.add_argument("--repeat", type=int, default=None, help="manifest rows = distinct x 3 x repeat")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--block-rows", type=int, default=256, help="rows per decode task (audio.decode_batch_size)"
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-feed-cache")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-decode-stage")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    lo, hi = CLIPS[a.clips]
    files = clip_files(a.cache, a.distinct, lo, hi)
    repeat = a.repeat or (1 if a.clips == "mixed" else 20)
    paths = [f for f, _ in files] * repeat
    m = a.out / f"manifest-{a.clips}.jsonl"
    many_rows_manifest(m, files, len(paths))
    blocks, storage = manifest_blocks(m, a.block_rows)
    variants = {
        "tight loop: soundfile + soxr": lambda: tight_loop(paths),
        "audio.decode, soxr": lambda: audio_decode(paths, "soxr"),
        "audio.decode, torchaudio": lambda: audio_decode(paths, "torchaudio"),
        "decode stage (prepare_block), soxr": lambda: stage(blocks, storage, "soxr"),
        "decode stage (prepare_block), torchaudio": lambda: stage(blocks, storage, "torchaudio"),
    }
    for fn in variants.values():
        fn()  # warm: imports, kernels, page cache
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    audio: dict[str, float] = {}
    names = list(variants)
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c, audio[name] = cpu_of(variants[name])
            cpu[name].append(c)
    info = {**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": len(paths),
            "clips": a.clips, "rounds": a.rounds, "load": os.getloadavg()}  # fmt: skip
    print(json.dumps(info))
    tight = audio[names[0]] / statistics.median(cpu[names[0]])
    print(
        f"{len(paths)} rows, {audio[names[0]]:.0f} audio-s per pass; median of {a.rounds} interleaved rounds"
    )
    print("| variant | audio-s per CPU-s | CPU ms per row | vs tight loop |")
    print("|---|---|---|---|")
    for name in names:
        c = statistics.median(cpu[name])
        rate = audio[name] / c
        print(f"| {name} | {rate:.0f} | {1000 * c / len(paths):.2f} | {rate / tight:.2f} |")
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        stage(blocks, storage, "soxr")
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
        print(s.getvalue())


if __name__ == "__main__":
    main()
