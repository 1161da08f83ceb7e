"""Can the CPU side of the job (fetch, decode, resample, Ray plumbing, packing, writing) feed a GPU?

    python bench/feed.py --mode feed    --clips mixed --rows 250   [--factor 4] [--repeats 2]
    python bench/feed.py --mode feed    --clips short --rows 10000
    python bench/feed.py --mode scale   --clips short --sizes 10000,100000[,1000000]
    python bench/feed.py --mode rerun   --clips short --rows 200000
    python bench/feed.py --mode profile --clips short --rows 4096
    python bench/feed.py --mode limit   --clips short

The corpus is a few dozen distinct real-speech clips (espeak-ng + sox) per format, 16 kHz mono wav,
44.1 kHz stereo flac and 48 kHz mono mp3, made once into `--cache` and referenced by many rows under
distinct ids, so large manifests cost nothing to make. `mixed`: 1-20 s clips; `short`: 0.5 s clips.
The model is near-free (D=32, 1+1 blocks, 32-channel CNN), so what is timed is the CPU side.

feed:    the real job (jobs/extract.py in a subprocess, embedded Ray with ray.num_cpus = cores) on N
         and factor x N rows, interleaved `--repeats` times. The marginal rate (T(fN) - T(N) cancels
         start-up) per core against the limit of two tight single-thread loops sharing a core: decoding
         (read bytes, soundfile, downmix, soxr resample: the job's default) and the near-free model's
         forward in the job's CPU batches (their CPU per row adds up; the decode-only ratio is printed
         too), CPU seconds per audio hour by stage, the
         marginal CPU per row by process role (from /proc, by the title Ray gives each worker: decode
         tasks, model actor, driver, Ray's own processes), and a projection to a GPU node's cores.
scale:   one job per size: rows/s, driver peak RSS (VmHWM of the job process), first committed unit.
rerun:   a job run to the end, then run again: the no-op rerun's exit code, rows processed, time.
limit:   the decode-only limit per format: soxr, torchaudio as FunASR calls it, and torchaudio with
         each rate's kernel built once.
profile: the stage functions called directly on blocks (no Ray) under cProfile: time per row per
         stage and the top functions by own time.
Results: a table on stdout and `<out>/feed-<mode>.json`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (
    CLIPS,
    ROOT,
    clip_files,
    feed_job_config,
    feed_model_dir,
    kill_session,
    machine,
    many_rows_manifest,
    proc_status_kb,
    session_cpu_by_role,
    session_cpu_ticks,
)

TICK = os.sysconf("SC_CLK_TCK")
LIMIT_VARIANTS = ("soxr", "torchaudio", "cached")  # the job's default resampler first
GPU_NODE_CORES = 16  # a typical one-GPU node; one core is left to the driver, raylet and model actor


# -- the corpus ----------------------------------------------------------------------------------


def corpus(a) -> list[tuple[Path, float]]:
    lo, hi = CLIPS[a.clips]
    return clip_files(a.cache, a.distinct, lo, hi, tuple(a.formats.split(",")))


def manifest(a, files, rows: int) -> tuple[Path, float]:
    path = a.out / f"manifest-{a.clips}-{rows}.jsonl"
    nominal = many_rows_manifest(path, files, rows)
    return path, nominal


# -- the job, watched ----------------------------------------------------------------------------


class Watch(threading.Thread):
    """While the job runs: the driver's VmHWM, when the first unit is committed, the CPU ticks of
    every process of the job's session (driver, GCS, raylet, workers)."""

    def __init__(self, pid: int, units: Path, t0: float):
        super().__init__(daemon=True)
        self.pid, self.units, self.t0 = pid, units, t0
        self.hwm_kb = 0
        self.first_unit_s: float | None = None
        self.ticks: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.roles: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self):
        k = 0
        while not self.stop.is_set():
            self.hwm_kb = max(self.hwm_kb, proc_status_kb(self.pid, "VmHWM"))
            if self.first_unit_s is None and self.units.is_dir():
                with os.scandir(self.units) as it:
                    if any(e.name.endswith(".json") for e in it):
                        self.first_unit_s = time.time() - self.t0
            if k % 5 == 0:
                session_cpu_ticks(self.pid, self.ticks)
            session_cpu_by_role(self.pid, self.last, self.roles)
            k += 1
            time.sleep(0.2)

    @property
    def cpu_s(self) -> float:
        return sum(self.ticks.values()) / TICK


def job(
    a,
    manifest_path: Path,
    out: Path,
    mode: str = "overwrite",
    log_name: str = "job",
    stop_s: float | None = None,
) -> dict:
    """Run jobs/extract.py on the manifest; -> wall, rows, audio, stage seconds, memory, CPU.
    `stop_s`: end the job (its whole session) that long after its first unit is committed, and
    report only memory and the time to that unit."""
    cfg = feed_job_config(
        a.out / f"{log_name}.yaml",
        manifest_path,
        a.model,
        out,
        cores=a.cores,
        mode=mode,
        rows_per_unit=a.rows_per_unit,
        torch_threads=a.torch_threads,
    )
    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)]
    for o in a.overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = a.out / f"{log_name}.log"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        watch = Watch(proc.pid, out / "_units", t0)
        watch.start()
        rc = _wait(proc, watch, stop_s)
        wall = time.time() - t0
        watch.stop.set()
        watch.join()
    roles = {k: round(v / TICK, 2) for k, v in watch.roles.items()}
    partial = {
        "wall_s": round(wall, 3),
        "cpu_s": round(watch.cpu_s, 2),
        "stopped": True,
        "cpu_s_by_role": roles,
    }
    partial.update(driver_hwm_mb=round(watch.hwm_kb / 1024, 1), first_unit_s=watch.first_unit_s)
    if stop_s is not None:
        return partial
    if rc != 0:
        raise SystemExit(f"job failed (exit {rc}); see {log}:\n{log.read_text()[-3000:]}")
    run = json.loads((out / "_run.json").read_text())
    return {
        "wall_s": round(wall, 3),
        "job_wall_s": run["wall_time_s"],  # inside run(): after imports and argument parsing
        "rows": run["rows"],
        "audio_s": round(run["audio_hours"] * 3600, 3),
        "stage_s": run["stage_seconds"],
        "cpu_s": round(watch.cpu_s, 2),
        "cpu_s_by_role": roles,
        "driver_hwm_mb": round(watch.hwm_kb / 1024, 1),
        "first_unit_s": None if watch.first_unit_s is None else round(watch.first_unit_s, 2),
    }


def _wait(proc: subprocess.Popen, watch: Watch, stop_s: float | None) -> int:
    if stop_s is None:
        return proc.wait()
    while proc.poll() is None:
        if watch.first_unit_s is not None and time.time() - watch.t0 > watch.first_unit_s + stop_s:
            kill_session(proc.pid)
            return proc.wait()
        time.sleep(0.2)
    return proc.returncode


# -- the decode-only limit -----------------------------------------------------------------------


def tight_decoder(resampler: str = "soxr"):
    """-> a function path -> 16 kHz mono float32, no pipeline code: read bytes, soundfile decode,
    downmix, resample. `resampler`: soxr at its HQ setting (the job's default), torchaudio as FunASR
    calls it, or `cached`: torchaudio with each rate's kernel built once (torchaudio rebuilds it on
    every call; same numbers)."""
    import numpy as np
    import soundfile as sf
    import soxr
    import torch
    import torchaudio
    import torchaudio.functional.functional as F

    kernels: dict[int, tuple] = {}

    def resample(mono: np.ndarray, sr: int) -> np.ndarray:
        if resampler == "soxr":
            return soxr.resample(mono, sr, 16000, quality="HQ")
        x = torch.from_numpy(np.ascontiguousarray(mono))
        if resampler == "torchaudio":
            return torchaudio.functional.resample(x, sr, 16000).numpy()
        g = math.gcd(sr, 16000)
        if sr not in kernels:
            kernels[sr] = F._get_sinc_resample_kernel(sr, 16000, g, dtype=x.dtype)
        kernel, width = kernels[sr]
        return F._apply_sinc_resample_kernel(x, sr, 16000, g, kernel, width).numpy()

    def one(path: Path) -> np.ndarray:
        data = path.read_bytes()
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
        return resample(mono, sr) if sr != 16000 else mono

    return one


def decode_limit(files: list[tuple[Path, float]], seconds: float = 10.0, resampler: str = "soxr") -> dict:
    """One thread: `tight_decoder(resampler)` over the distinct files in manifest order until
    `seconds` have passed."""
    import torch

    torch.set_num_threads(1)
    one = tight_decoder(resampler)
    for p, _ in files:  # warm: imports, page cache
        one(p)
    rows = samples = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p, _ in files:
            samples += len(one(p))
            rows += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "rows_per_s": round(rows / wall, 2),
        "audio_s_per_s": round(samples / 16000 / wall, 2),
        "cpu_share": round(cpu / wall, 3),  # < 1: the box's other load took the core part of the time
        "audio_s_per_cpu_s": round(samples / 16000 / cpu, 2),
        "rows_per_cpu_s": round(rows / cpu, 2),
    }


def forward_limit(files: list[tuple[Path, float]], model_dir: Path, seconds: float = 10.0) -> dict:
    """One thread: the near-free model's own forward on the distinct files (decoded once, outside
    the timing), in the job's CPU batches (longest first, up to 32 clips and 16 s of padded audio
    per forward), repeated until `seconds` have passed. The model is part of the issue's limit: the
    job can at best decode and run the model back to back on every core."""
    import torch

    from pipeline.batching import collate, pack
    from pipeline.model import load_model

    torch.set_num_threads(1)
    model = load_model(str(model_dir), device="cpu", dtype=torch.float32).model
    decode = tight_decoder("soxr")
    clips = [decode(p) for p, _ in files]
    batches = [[clips[i] for i in g] for g in pack([len(c) for c in clips], 16 * 16000, 32)]

    def forward_all() -> None:
        for group in batches:
            wav, lengths = collate(group)
            model(wav, lengths)

    with torch.inference_mode():
        forward_all()  # warm: kernels, allocator
        rows = samples = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            forward_all()
            rows += len(clips)
            samples += sum(len(c) for c in clips)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "rows_per_s": round(rows / wall, 2),
        "cpu_share": round(cpu / wall, 3),
        "audio_s_per_cpu_s": round(samples / 16000 / cpu, 2),
        "rows_per_cpu_s": round(rows / cpu, 2),
    }


def loops_limit(decode: dict, forward: dict) -> dict:
    """Decode and forward back to back on one core: CPU seconds per row add up."""
    per_row = 1 / decode["rows_per_cpu_s"] + 1 / forward["rows_per_cpu_s"]
    audio_per_row = decode["audio_s_per_cpu_s"] / decode["rows_per_cpu_s"]
    return {"rows_per_cpu_s": round(1 / per_row, 2), "audio_s_per_cpu_s": round(audio_per_row / per_row, 2)}


def per_format_limit(a, files) -> dict:
    """The decode-only limit per format, per resampler (soxr, torchaudio, torchaudio with cached kernels)."""
    out = {}
    for fmt in a.formats.split(","):
        mine = [f for f in files if f[0].stem.endswith(fmt)]
        out[fmt] = {r: decode_limit(mine, a.limit_s / 3, r) for r in LIMIT_VARIANTS}
    print(
        "| format | "
        + " | ".join(f"rows/CPU-s ({r})" for r in LIMIT_VARIANTS)
        + " | "
        + " | ".join(f"audio-s/CPU-s ({r})" for r in LIMIT_VARIANTS)
        + " |"
    )
    print("|---" * (1 + 2 * len(LIMIT_VARIANTS)) + "|")
    for fmt, r in out.items():
        rows = [str(r[v]["rows_per_cpu_s"]) for v in LIMIT_VARIANTS]
        audio = [str(r[v]["audio_s_per_cpu_s"]) for v in LIMIT_VARIANTS]
        print(f"| {fmt} | " + " | ".join(rows + audio) + " |")
    return {"per_format": out}


# -- modes -----------------------------------------------------------------------------------------


def mode_feed(a, files) -> dict:
    small, big = a.rows, a.rows * a.factor
    m_small, _ = manifest(a, files, small)
    m_big, _ = manifest(a, files, big)
    rounds = []
    for r in range(a.repeats):
        limit = decode_limit(files, a.limit_s)
        forward = forward_limit(files, a.model, a.limit_s)
        both = loops_limit(limit, forward)
        j_small = job(a, m_small, a.out / "job-small", log_name=f"small-{r}")
        j_big = job(a, m_big, a.out / "job-big", log_name=f"big-{r}")
        rounds.append(
            {
                "limit": limit,
                "forward": forward,
                "loops": both,
                "small": j_small,
                "big": j_big,
                **marginal(j_small, j_big, a.cores),
            }
        )
        x = rounds[-1]
        # the measure: the job per core against decoding + the model's forward in tight loops
        x["ratio"] = round(x["audio_s_per_s_per_core"] / both["audio_s_per_cpu_s"], 3)
        # the box is shared: the same ratio per CPU second each side really got
        x["ratio_cpu"] = round(3600 / x["cpu_s_per_audio_h"] / both["audio_s_per_cpu_s"], 3)
        x["ratio_decode_only"] = round(x["audio_s_per_s_per_core"] / limit["audio_s_per_s"], 3)
        print_round(r, rounds[-1], small, big)
    for r, x in enumerate(rounds):
        roles = ", ".join(f"{k} {v}" for k, v in x["cpu_ms_per_row_by_role"].items())
        print(f"round {r}: marginal CPU ms per row by process role: {roles}")
    best = max(rounds, key=lambda x: x["audio_s_per_s"])
    return {"rounds": rounds, "best": best, "projection": projection(best, a.cores)}


def marginal(s: dict, b: dict, cores: int) -> dict:
    dt = b["wall_s"] - s["wall_s"]
    rows = b["rows"]["ok"] + b["rows"]["error"] - s["rows"]["ok"] - s["rows"]["error"]
    audio = b["audio_s"] - s["audio_s"]
    cpu = b["cpu_s"] - s["cpu_s"]
    stages = {k: (b["stage_s"][k] - s["stage_s"][k]) / audio * 3600 for k in b["stage_s"]}
    roles = b["cpu_s_by_role"]
    by_role = {k: 1000 * (v - s["cpu_s_by_role"].get(k, 0.0)) / rows for k, v in roles.items()}
    return {
        "cpu_ms_per_row_by_role": {k: round(v, 3) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])},
        "rows_per_s": round(rows / dt, 2),
        "audio_s_per_s": round(audio / dt, 2),
        "rows_per_s_per_core": round(rows / dt / cores, 2),
        "audio_s_per_s_per_core": round(audio / dt / cores, 2),
        "cpu_s_per_audio_h": round(cpu / audio * 3600, 1),
        "stage_s_per_audio_h": {k: round(v, 1) for k, v in stages.items()},
        "cpu_share": round(cpu / dt / cores, 3),  # of the Ray cores the job got (the box is shared)
    }


def projection(best: dict, cores: int) -> dict:
    """Two ways: the measured per-core marginal rate x (node cores - 1); and the CPU seconds per audio
    hour not spent in the model stage (on a GPU node the forward leaves the CPUs), into (cores - 1) CPUs."""
    usable = GPU_NODE_CORES - 1
    stage = best["stage_s_per_audio_h"]
    # stage seconds are wall time inside each stage (inflated on a shared box): they apportion the
    # measured CPU between the model and the rest, they are not CPU seconds themselves
    share = 1 - stage.get("model_s", 0.0) / max(sum(stage.values()), 1e-9)
    cpu_side = best["cpu_s_per_audio_h"] * share
    return {
        "cores": usable,
        "from_rate_audio_s_per_s": round(best["audio_s_per_s_per_core"] * usable, 1),
        "from_cpu_audio_s_per_s": round(usable * 3600 / cpu_side, 1) if cpu_side > 0 else None,
        "rows_per_s": round(best["rows_per_s_per_core"] * usable, 1),
    }


def print_round(r: int, x: dict, small: int, big: int) -> None:
    s, b, lim = x["small"], x["big"], x["limit"]
    if r == 0:
        print(
            "| round | T(N) s | T(4N) s | marginal rows/s | audio-s/s | per core: rows/s | audio-s/s | "
            "decode limit audio-s/CPU-s (1 thread) | forward limit audio-s/CPU-s | both loops audio-s/CPU-s | "
            "ratio (per CPU-s) | vs decode only | CPU s/audio-h | decode/model/write s/audio-h | CPU share |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    st = x["stage_s_per_audio_h"]
    print(
        f"| {r} | {s['wall_s']:.1f} ({small}) | {b['wall_s']:.1f} ({big}) | {x['rows_per_s']} | "
        f"{x['audio_s_per_s']} | {x['rows_per_s_per_core']} | {x['audio_s_per_s_per_core']} | "
        f"{lim['audio_s_per_cpu_s']} ({lim['rows_per_cpu_s']} rows) | {x['forward']['audio_s_per_cpu_s']} "
        f"({x['forward']['rows_per_cpu_s']} rows) | {x['loops']['audio_s_per_cpu_s']} ({x['loops']['rows_per_cpu_s']} rows) | "
        f"{x['ratio']} ({x['ratio_cpu']}) | {x['ratio_decode_only']} | "
        f"{x['cpu_s_per_audio_h']} | {st['decode_s']}/{st['model_s']}/{st['write_s']} | {x['cpu_share']} |",
        flush=True,
    )


def mode_scale(a, files) -> dict:
    print("| rows | wall s | rows/s (incl. start-up) | marginal rows/s | driver VmHWM MB | first unit s |")
    print("|---|---|---|---|---|---|")
    results, prev = [], None
    for n in [int(x) for x in a.sizes.split(",")]:
        t = time.time()
        m, _ = manifest(a, files, n)
        made = time.time() - t
        stop = None if n <= a.full_max else 5.0
        shutil.rmtree(a.out / f"scale-{n}", ignore_errors=True)  # its first unit is watched for
        j = job(a, m, a.out / f"scale-{n}", log_name=f"scale-{n}", stop_s=stop)
        j.update(n=n, manifest_write_s=round(made, 1))
        if stop is not None:  # stopped 5 s after its first unit: memory and start-up only
            print(f"| {n} | (stopped) | | | {j['driver_hwm_mb']} | {j['first_unit_s']} |", flush=True)
            results.append(j)
            continue
        j["rows_per_s"] = round(n / j["wall_s"], 1)
        if prev:
            j["marginal_rows_per_s"] = round((n - prev["n"]) / (j["wall_s"] - prev["wall_s"]), 1)
        print(
            f"| {n} | {j['wall_s']:.1f} | {j['rows_per_s']} | {j.get('marginal_rows_per_s', '')} | "
            f"{j['driver_hwm_mb']} | {j['first_unit_s']} |",
            flush=True,
        )
        results.append(j)
        prev = j
    return {"sizes": results}


def mode_rerun(a, files) -> dict:
    m, _ = manifest(a, files, a.rows)
    out = a.out / f"rerun-{a.rows}"
    first = job(a, m, out, mode="overwrite", log_name="rerun-first")
    again = job(a, m, out, mode="resume", log_name="rerun-again")
    print("| rows | first run s | rerun s | rerun rows ok / skipped | rerun driver VmHWM MB |")
    print("|---|---|---|---|---|")
    r = again["rows"]
    print(
        f"| {a.rows} | {first['wall_s']:.1f} | {again['wall_s']:.1f} | {r['ok']} / {r['skipped']} | "
        f"{again['driver_hwm_mb']} |"
    )
    return {"first": first, "rerun": again, "noop": r["ok"] == 0 and r["error"] == 0}


def mode_profile(a, files) -> dict:
    """The three stage functions on the manifest's blocks, in this process, under cProfile."""
    import pyarrow as pa

    from pipeline.config import InputConfig, StorageConfig
    from pipeline.manifest import Piece, count_rows, discover, read_units
    from pipeline.predictor import EmotionPredictor
    from pipeline.prepare import prepare_block
    from pipeline.schema import output_schema, passthrough_schema
    from pipeline.storage import Storage
    from pipeline.writer import write_parts

    m, _ = manifest(a, files, a.rows)
    storage = Storage.from_config(StorageConfig())
    icfg = InputConfig(manifest=str(m), rows_per_unit=a.rows_per_unit)
    (source,) = discover(icfg, storage)
    predictor = EmotionPredictor(source=str(a.model), device="cpu", dtype="float32", torch_threads=1)
    out = a.out / "profile-out"
    stages = {"read": [], "prepare": [], "model": [], "write": []}
    profiles = {k: cProfile.Profile() for k in stages}

    def timed(name, fn, *args, **kw):
        profiles[name].enable()
        t0 = time.process_time()
        r = fn(*args, **kw)
        r = list(r) if not isinstance(r, pa.Table) else r
        stages[name].append(time.process_time() - t0)
        profiles[name].disable()
        return r

    count = count_rows(source, icfg, storage)
    piece = Piece(0, 0, -(-count.rows // icfg.rows_per_unit), 0, count.rows)  # the whole source
    blocks = timed("read", read_units, source, icfg, storage, piece=piece, skip=None, block_rows=256)
    schema = None
    rows = 0
    for block in blocks:
        rows += block.num_rows
        for ready in timed("prepare", prepare_block, block, storage=storage):
            done = timed("model", predictor, ready)
            schema = schema or output_schema(
                32, len(predictor.labels), False, passthrough_schema(block.schema), {}
            )
            timed(
                "write",
                write_parts,
                done,
                output=str(out),
                schema=schema,
                storage=storage,
                compression="zstd",
                max_file_mb=256,
                rows_per_file=2000,
            )
    result = {"rows": rows, "us_per_row": {}, "top": {}}
    print(f"{rows} rows, {len(blocks)} blocks; CPU us per row by stage, then the top functions (own time)")
    for name, times in stages.items():
        us = 1e6 * sum(times) / rows
        result["us_per_row"][name] = round(us, 1)
        s = io.StringIO()
        st = pstats.Stats(profiles[name], stream=s).sort_stats("tottime")
        top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[: a.top]
        result["top"][name] = [
            {
                "fn": f"{Path(f).name}:{line}({fn})",
                "own_us_per_row": round(1e6 * v[2] / rows, 2),
                "calls": v[1],
            }
            for (f, line, fn), v in top
        ]
        ours = sorted(
            ((k, v) for k, v in st.stats.items() if "/pipeline/" in k[0]), key=lambda kv: -kv[1][3]
        )[: a.top]
        result["pipeline_cumulative"] = result.get("pipeline_cumulative", {})
        result["pipeline_cumulative"][name] = [
            {
                "fn": f"{Path(f).name}:{line}({fn})",
                "cum_us_per_row": round(1e6 * v[3] / rows, 2),
                "calls": v[1],
            }
            for (f, line, fn), v in ours
        ]
        print(f"\n{name}: {us:.1f} us/row; top own time:")
        for t in result["top"][name]:
            print(f"  {t['own_us_per_row']:8.2f} us/row  {t['calls']:>8} calls  {t['fn']}")
        print("  pipeline functions, cumulative:")
        for t in result["pipeline_cumulative"][name]:
            print(f"  {t['cum_us_per_row']:8.2f} us/row  {t['calls']:>8} calls  {t['fn']}")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["feed", "scale", "rerun", "profile", "limit"], default="feed")
    p.add_argument("--clips", choices=list(CLIPS), default="mixed")
    p.add_argument("--rows", type=int, default=None, help="N (default: 250 mixed, 10000 short)")
    p.add_argument("--factor", type=int, default=4, help="feed: the second run has factor x N rows")
    p.add_argument("--repeats", type=int, default=2, help="feed: interleaved rounds")
    p.add_argument("--sizes", default="10000,100000", help="scale: manifest sizes")
    p.add_argument(
        "--full-max", type=int, default=200000, help="scale: larger sizes run only to their first unit (+5 s)"
    )
    p.add_argument("--distinct", type=int, default=12, help="distinct clips per format")
    p.add_argument("--formats", default="wav,flac,mp3")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="ray.num_cpus of the job")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="model.torch_threads: the near-free model's second "
        "thread only competes with decoding on a small box",
    )
    p.add_argument("--rows-per-unit", type=int, default=1000)
    p.add_argument("--limit-s", type=float, default=10.0, help="seconds of each tight loop (decode, forward)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-feed-cache")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-feed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    a.rows = a.rows or (250 if a.clips == "mixed" else 10000)
    a.out.mkdir(parents=True, exist_ok=True)
    a.model = feed_model_dir(a.cache / "model")
    files = corpus(a)
    info = {"machine": machine(), "load_before": os.getloadavg(), "args": {**vars(a)}}
    print(info["machine"], f"load average {info['load_before'][0]:.1f}", flush=True)
    modes = {"feed": mode_feed, "scale": mode_scale, "rerun": mode_rerun, "profile": mode_profile}
    result = {**modes, "limit": per_format_limit}[a.mode](a, files)
    info["load_after"] = os.getloadavg()
    info["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    path = a.out / f"feed-{a.mode}-{a.clips}.json"
    path.write_text(json.dumps({**info, **result}, indent=2))
    if a.mode == "feed":
        pr = result["projection"]
        print(
            f"\nprojection for a {GPU_NODE_CORES}-core node ({pr['cores']} cores feeding): "
            f"{pr['from_rate_audio_s_per_s']} audio-s/s from the best marginal rate per core, "
            f"{pr['from_cpu_audio_s_per_s']} audio-s/s from CPU s per audio-h without the model stage"
        )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
