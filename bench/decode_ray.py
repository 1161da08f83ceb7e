"""The decode stage under Ray with every core busy: CPU-seconds of the decode tasks per audio-second, and
the worker processes Ray starts, for this checkout and another (e.g. the base commit), side by side.

    python bench/decode_ray.py --clips mixed --rows 600 [--other /tmp/head] [--rounds 2] [--cores 2]
    python bench/decode_ray.py --clips wav --rows 3000 --other /tmp/head

Each round runs the real job (jobs/extract.py, embedded Ray with `ray.num_cpus` = cores, a near-free
model: bench/common.py's feed model) on a manifest of many rows over a few dozen real clips (`mixed`:
1-20 s 16 kHz wav / 44.1 kHz stereo flac / 48 kHz mp3, `wav`: 1-20 s 16 kHz wav only, `short`: the
three formats in 0.5 s clips, many tasks per audio-second), once with
this checkout's `pipeline` and once with `--other`'s (PYTHONPATH), interleaved. While it runs, every
process of its session is sampled every 0.1 s (bench/common.py's session_cpu_by_role: CPU ticks
under the role the process title names at that moment). Reported per code:

- audio-s per CPU-s of the decode tasks (`ray::...prepare_block`): the issue's measure;
- audio-s per CPU-s of every Ray worker process (decode, read and write tasks, Ray Data's actors,
  workers between tasks: start-up and imports), the model actor apart;
- worker processes started (distinct pids that ran as Ray workers) and Ray's "worker processes have
  been started" warnings in the job's output; wall time.

Audio seconds are the output's `duration_s` summed (each row's decoded length).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
from common import (
    ROOT,
    Sampler,
    clip_files,
    feed_job_config,
    feed_model_dir,
    kill_session,
    machine,
    many_rows_manifest,
    session_cpu_by_role,
)

TICK = os.sysconf("SC_CLK_TCK")
WORKER_ROLES_EXCLUDED = ("driver", "Ray's system processes (GCS, raylet, agents)", "model actor")


class Roles(Sampler):
    """CPU ticks by role, and every pid seen as a Ray worker, of session `sid`."""

    def __init__(self, sid: int):
        super().__init__(0.1)
        self.sid, self.last, self.roles = sid, {}, {}
        self.workers: set[int] = set()

    def sample(self) -> bool:
        session_cpu_by_role(self.sid, self.last, self.roles)
        for pid in self.last:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            title = argv[0].decode(errors="replace")
            if title.startswith("ray::") or any(a.endswith(b"default_worker.py") for a in argv[:3]):
                self.workers.add(pid)
        return True


def one_run(code: Path, cfg: Path, out: Path, log: Path, sets: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)]
    for s in sets:
        cmd += ["--set", s]
    # the code's root first; the rest of the path stays (a GPU machine's unpacked Ray, say)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            with Roles(proc.pid) as roles:
                rc = proc.wait(timeout=1800)
        finally:
            kill_session(proc.pid)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    audio = sum(
        x or 0.0
        for x in pads.dataset(str(out), format="parquet").to_table(["duration_s"])["duration_s"].to_pylist()
    )
    cpu = {k: v / TICK for k, v in roles.roles.items()}
    decode = cpu.get("decode tasks", 0.0)
    workers = sum(v for k, v in cpu.items() if k not in WORKER_ROLES_EXCLUDED)
    return {
        "rc": rc,
        "wall_s": wall,
        "audio_s": audio,
        "decode_cpu_s": decode,
        "workers_cpu_s": workers,
        "per_decode_cpu_s": audio / max(decode, 1e-9),
        "per_worker_cpu_s": audio / max(workers, 1e-9),
        "workers_started": len(roles.workers),
        "churn_warnings": text.count("worker processes have been started"),
        "cpu_by_role": {k: round(v, 2) for k, v in sorted(cpu.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", choices=["mixed", "wav", "short"], default="mixed")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--distinct", type=int, default=12, help="distinct clips per format")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--other", type=Path, help="another checkout (its root) to run side by side")
    p.add_argument("--manifest", type=Path, help="an existing manifest instead of the generated corpus")
    p.add_argument("--set", action="append", default=[], help="job config override k=v, both codes")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-feed-cache")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-decode-ray")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    formats = ("wav",) if a.clips == "wav" else ("wav", "flac", "mp3")
    lo, hi = (0.5, 0.5) if a.clips == "short" else (1.0, 20.0)
    manifest = a.manifest
    if manifest is None:
        files = clip_files(a.cache, a.distinct, lo, hi, formats=formats)
        manifest = a.out / f"manifest-{a.clips}.jsonl"
        many_rows_manifest(manifest, files, a.rows)
    model = feed_model_dir(a.cache / "feed-model")
    codes = {"this": ROOT, **({"other": a.other.resolve()} if a.other else {})}
    results: dict[str, list[dict]] = {k: [] for k in codes}
    for r in range(a.rounds):
        for name in list(codes)[r % 2 :] + list(codes)[: r % 2]:
            out = a.out / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = feed_job_config(a.out / f"{name}.yaml", manifest, model, out, cores=a.cores)
            res = one_run(codes[name], cfg, out, a.out / f"{name}-{r}.log", a.set)
            results[name].append(res)
            print(name, r, json.dumps(res), flush=True)
    info = {**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": a.rows,
            "clips": a.clips, "cores": a.cores, "load": os.getloadavg()}  # fmt: skip
    print(json.dumps(info))
    print("| code | audio-s per decode-task CPU-s | per CPU-s of all Ray workers (model actor apart) | "
          "workers started | churn warnings | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        med = {
            k: statistics.median(x[k] for x in rs) for k in ("per_decode_cpu_s", "per_worker_cpu_s", "wall_s")
        }
        started = "/".join(str(x["workers_started"]) for x in rs)
        warns = "/".join(str(x["churn_warnings"]) for x in rs)
        print(f"| {name} ({codes[name]}) | {med['per_decode_cpu_s']:.0f} | {med['per_worker_cpu_s']:.0f} | "
              f"{started} | {warns} | {med['wall_s']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
