"""Where a decode task's CPU goes, from the decoders up: what sets the floor of "audio-s per CPU-s".

    python bench/decode_floor.py [--rows 6000] [--distinct 12] [--skip ray] [--formats wav]

On the clips `bench/decode_ray.py --clips mixed` uses (1-20 s: 16 kHz wav, 44.1 kHz stereo 24-bit
flac, 48 kHz mp3), one thread, best of 3, audio-s per CPU-s (process time):

1. the decoders alone, per format: `soundfile.read` (libsndfile) and PyAV (ffmpeg) to float32 at the
   file's rate and channels, no resampling (the floor whatever the pipeline does);
2. the channel mean and libsoxr (HQ, to 16 kHz) alone on the decoded samples, as the job runs them;
   then the job's `pipeline.audio.decode` per format (decode + downmix + soxr HQ to 16 kHz + checks);
3. the job's decode stage, `pipeline.prepare.prepare_block`, in this process on `--rows` rows of the
   mixed manifest (what a decode task does, without Ray);
4. the same as a Ray Data `map_batches` over blocks of 100 rows on an embedded 2-CPU Ray, nothing
   else running (no model stage): the CPU of the task's own work (`prepare_block`'s thread time),
   and of the worker processes in all (their start-up imports, Ray Data's block handling).

The real job (a model stage beside it, the manifest read, the writer) is `bench/decode_ray.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import time
from pathlib import Path

from common import ROOT, clip_files, machine, many_rows_manifest

TICK = os.sysconf("SC_CLK_TCK")


def best_rate(fn, datas: list[bytes], repeats: int = 3) -> float:
    """audio-s per CPU-s of fn over datas (fn returns the audio-s it decoded), best of `repeats`."""
    best = None
    for _ in range(repeats):
        c = time.process_time()
        audio = sum(fn(d) for d in datas)
        rate = audio / (time.process_time() - c)
        best = rate if best is None else max(best, rate)
    return best


def soundfile_read(data: bytes) -> float:
    import soundfile as sf

    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    return len(x) / sr


def pyav_read(data: bytes) -> float:
    import av

    with av.open(io.BytesIO(data)) as c:
        s = c.streams.audio[0]
        n = 0
        for frame in c.decode(s):
            frame.to_ndarray()
            n += frame.samples
        return n / s.rate


def job_decode(data: bytes) -> float:
    from pipeline.audio import decode

    return decode(data).duration_s


def resample_rates(datas: list[bytes]) -> tuple[str, str]:
    """(downmix, resample) alone in audio-s per CPU-s: the job's channel mean and its soxr HQ to 16 kHz
    on the decoded samples ("-" where the files have one channel / are 16 kHz already)."""
    import soundfile as sf

    from pipeline.audio import TARGET_SR, _downmix, _soxr

    decoded = [sf.read(io.BytesIO(d), dtype="float32") for d in datas]
    monos = [(_downmix(x) if x.ndim == 2 else x, sr) for x, sr in decoded]
    seconds = [len(x) / sr for x, sr in decoded]

    def rate(fn, items) -> str:
        return f"{best_rate(lambda i: (fn(items[i]), seconds[i])[1], list(range(len(items)))):,.0f}"

    mix = rate(lambda d: _downmix(d[0]), decoded) if decoded[0][0].ndim == 2 else "-"
    resample = rate(lambda m: _soxr(*m), monos) if monos[0][1] != TARGET_SR else "-"
    return mix, resample


def manifest_table(manifest: Path, rows: int):
    import pyarrow as pa

    recs = [json.loads(line) for line in manifest.read_text().splitlines()[:rows]]
    ids = [r["id"] for r in recs]
    return pa.table({"id": ids, "path": [r["path"] for r in recs], "recording_id": ids})


def in_process(table) -> float:
    from pipeline.prepare import prepare_block
    from pipeline.storage import Storage

    storage = Storage()
    list(prepare_block(table.slice(0, 50), storage=storage))  # imports and first calls off the clock
    c = time.process_time()
    audio = sum(sum(b["duration_s"].to_pylist()) for b in prepare_block(table, storage=storage))
    return audio / (time.process_time() - c)


def _timed_prepare(batch, **kw):
    """prepare_block, with the CPU of its own thread (between yields) and of its process per block."""
    import pyarrow as pa

    from pipeline.prepare import prepare_block

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    blocks = prepare_block(batch, **kw)
    while True:
        t = time.thread_time()
        try:
            out = next(blocks)
        except StopIteration:
            return
        own = time.thread_time() - t
        pad = [0.0] * (out.num_rows - 1)
        out = out.append_column("_own_cpu_s", pa.array([own, *pad]))
        yield out.append_column("_pid", pa.array([os.getpid()] * out.num_rows))


def under_ray(table, per_task: int) -> dict:
    import ray
    import ray.data

    from pipeline.storage import Storage

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.target_max_block_size = 64 * 2**20
        ds = ray.data.from_arrow([table.slice(i, per_task) for i in range(0, table.num_rows, per_task)])
        ds = ds.map_batches(
            _timed_prepare,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"storage": Storage()},
            num_cpus=0.5,  # as the job's decode tasks
        )
        audio = own = 0.0
        pids: set[int] = set()
        for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            audio += sum(b["duration_s"].to_pylist())
            own += sum(b["_own_cpu_s"].to_pylist())
            pids |= set(b["_pid"].to_pylist())
        total = 0.0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        return {"audio_s": audio, "own": audio / own, "workers": audio / total, "worker_processes": len(pids)}
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--distinct", type=int, default=12, help="distinct clips per format")
    p.add_argument("--per-task", type=int, default=100, help="rows per Ray task (part 4)")
    p.add_argument("--skip", action="append", default=[], choices=["pyav", "ray"])
    p.add_argument("--formats", default="wav,flac,mp3", help="the clips' formats (e.g. wav alone)")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-feed-cache")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    print(
        json.dumps(
            {**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()}
        )
    )

    formats = a.formats.split(",")
    files = [f for f in clip_files(a.cache, a.distinct, 1.0, 20.0) if f[0].suffix[1:] in formats]
    by_format: dict[str, list[bytes]] = {}
    for path, _ in files:
        by_format.setdefault(path.suffix[1:], []).append(path.read_bytes())
    print(
        "| format | clips | soundfile.read | PyAV | downmix alone | soxr HQ alone "
        "| the job's decode (to 16 kHz mono) |"
    )
    print("|---|---|---|---|---|---|---|")
    for fmt, datas in by_format.items():
        sf_rate = best_rate(soundfile_read, datas)
        av_rate = "-" if "pyav" in a.skip else f"{best_rate(pyav_read, datas):,.0f}"
        mix, resample = resample_rates(datas)
        print(
            f"| {fmt} | {len(datas)} | {sf_rate:,.0f} | {av_rate} | {mix} | {resample} "
            f"| {best_rate(job_decode, datas):,.0f} |"
        )

    manifest = a.cache / f"decode-floor-{'-'.join(formats)}-{a.distinct}-{a.rows}.jsonl"
    many_rows_manifest(manifest, files, a.rows)
    table = manifest_table(manifest, a.rows)
    print(f"\nprepare_block in process, {a.rows} rows: {in_process(table):,.0f} audio-s per CPU-s")
    if "ray" not in a.skip:
        r = under_ray(table, a.per_task)
        print(
            f"prepare_block as Ray Data tasks ({a.per_task} rows each, 0.5 CPU, 2 CPUs, {r['audio_s']:,.0f} "
            f"audio-s, {r['worker_processes']} workers): {r['own']:,.0f} per CPU-s of the task's own work, "
            f"{r['workers']:,.0f} per CPU-s of the worker processes in all"
        )


if __name__ == "__main__":
    main()
