"""The job end to end once, as a user runs it, with a deadline and the numbers a GPU check needs.

    python bench/gpu_job.py --work W --corpus W/corpus/corpus-20000.json --name defaults --deadline 110
                            [--device cuda] [--model base|feed] [--set model.gpus_per_actor=0.5 ...]

Runs jobs/extract.py in a session of its own (its embedded Ray inside) with a config that sets only
input.manifest, model.source, model.device, output.path and output.mode (everything else: defaults, or
the `--set` overrides). At `--deadline` seconds it sends SIGTERM (the job stops cleanly, exit 143); what
is left of the session `--grace` seconds later is killed, so a run never outlasts deadline + grace.
Steady-state rates come from the progress lines (each timestamped as it arrives): audio-s/s and rows/s
between the first line that counts rows and the last line before the end, which leaves start-up (to the
first counted rows) and the tail (from that last line to the exit) out; both are reported apart. GPU
busy % (nvidia-smi, 0.5 s) and the node's CPU busy % (/proc/stat, 1 s) are averaged over that same
window; peak memory is the job's whole process tree (private memory + object store) and the GPU's
memory.used. A `top` snapshot is taken mid-run. Appends one JSON line to W/gpu_jobs.jsonl and prints a
one-line summary; the job's output is in W/NAME.log.
--model base: a random-init base-size model (what the GPU check measures); feed: the near-free model of
bench/feed.py (a dry run on a CPU box).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (
    ROOT,
    GpuBusy,
    NodeCpu,
    PeakMemory,
    RoleCpu,
    base_model_dir,
    feed_model_dir,
    kill_session,
    mean_between,
    role_cpu_between,
)

PROGRESS = re.compile(r"\[emotion2vec\] (\d+)/(\d+) rows .*?\| ([\d.]+) h audio \|")


def run(a) -> dict:
    corpus = json.loads(a.corpus.read_text())
    model = base_model_dir(a.work / "model") if a.model == "base" else feed_model_dir(a.work / "feed-model")
    out = a.work / f"out-{a.name}"
    cfg = a.work / f"{a.name}.yaml"
    cfg.write_text(
        f"input:\n  manifest: {corpus['manifest']}\nmodel:\n  source: {model}\n  device: {a.device}\n"
        f"output:\n  path: {out}\n  mode: overwrite\n"
    )
    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)]
    for o in a.overrides:
        cmd += ["--set", o]
    log = a.work / f"{a.name}.log"
    progress: list[tuple[float, int, int, float]] = []  # (arrival, rows, total, audio s)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    timed_out = False
    with open(log, "w", buffering=1) as f, GpuBusy() as gpu, NodeCpu() as cpu:
        f.write(f"$ {' '.join(cmd)}\n{cfg.read_text()}\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env, text=True
        )
        reader = threading.Thread(target=read_lines, args=(proc.stdout, f, progress), daemon=True)
        reader.start()
        top = threading.Timer(a.top_at, snapshot_top, args=(a.work / f"{a.name}.top",))
        top.start()
        with PeakMemory(proc.pid) as mem, RoleCpu(proc.pid) as roles:
            try:
                rc = proc.wait(timeout=a.deadline)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=a.grace)
                except subprocess.TimeoutExpired:
                    rc = "killed"
            wall = time.monotonic() - t0
            kill_session(proc.pid)  # Ray's processes of this job, whatever the driver left
        top.cancel()
        reader.join(timeout=5)
    return summarise(a, corpus, progress, t0, wall, rc, timed_out, gpu, cpu, mem, out, roles)


def read_lines(stream, f, progress: list) -> None:
    for line in stream:
        f.write(line)
        m = PROGRESS.search(line)
        if m:
            rows, total, hours = int(m[1]), int(m[2]), float(m[3])
            progress.append((time.monotonic(), rows, total, hours * 3600))
    f.flush()


def snapshot_top(path: Path) -> None:
    try:
        out = subprocess.run(["top", "-b", "-n1", "-w", "200"], capture_output=True, text=True, timeout=20)
        path.write_text("\n".join(out.stdout.splitlines()[:30]) + "\n")
    except (OSError, subprocess.TimeoutExpired):
        pass


def summarise(a, corpus, progress, t0, wall, rc, timed_out, gpu, cpu, mem, out, roles) -> dict:
    counted = [p for p in progress if p[1] > 0]
    # the window ends at the last line that is not the final one (rows == total comes at the end)
    inner = [p for p in counted if p[1] < p[2]] or counted
    r = {
        "name": a.name,
        "overrides": a.overrides,
        "device": a.device,
        "rc": rc,
        "deadline_hit": timed_out,
        "wall_s": round(wall, 1),
        "rows_total": corpus["rows"],
        "rows_done": counted[-1][1] if counted else 0,
        "startup_s": round(counted[0][0] - t0, 1) if counted else None,
        "peak_in_use_gb": round(mem.in_use / 1e9, 2),
        "peak_rss_sum_gb": round(mem.rss / 1e9, 2),
        "gpu_mem_peak_mib": max(gpu.mib) if gpu.mib else None,
        "gpu_busy_whole_run": round(sum(gpu.samples) / len(gpu.samples)) if gpu.samples else None,
    }
    if len(inner) >= 2 and inner[-1][0] > inner[0][0]:
        (ta, ra, _, sa), (tb, rb, _, sb) = inner[0], inner[-1]
        busy = mean_between(gpu.times, gpu.samples, ta, tb)
        node = mean_between(cpu.times, cpu.samples, ta, tb)
        r.update(
            steady_window_s=round(tb - ta, 1),
            steady_audio_s_per_s=round((sb - sa) / (tb - ta)),
            steady_rows_per_s=round((rb - ra) / (tb - ta), 1),
            gpu_busy_steady=None if busy is None else round(busy),
            cpu_busy_steady=None if node is None else round(node),
        )
        # where the node's cores go in the steady state: cores busy per role, and CPU per audio-second
        by_role = role_cpu_between(roles, ta, tb)
        r["cores_by_role_steady"] = {k: round(v / (tb - ta), 2) for k, v in sorted(by_role.items())}
        if sb > sa:
            r["cpu_us_per_audio_s_by_role"] = {
                k: round(1e6 * v / (sb - sa)) for k, v in sorted(by_role.items())
            }
        if not timed_out and counted[-1][1] >= counted[-1][2]:
            r["tail_s"] = round(t0 + wall - tb, 1)
    run_json = out / "_run.json"
    if run_json.exists():
        run = json.loads(run_json.read_text())
        r["run_json"] = {k: run.get(k) for k in ("throughput", "stage_seconds", "placement")}
    return r


def line(r: dict) -> str:
    def num(key, fmt="{}", none="-"):
        v = r.get(key)
        return none if v is None else fmt.format(v)

    return (
        f"{r['name']}: rc {r['rc']}{' (deadline hit)' if r['deadline_hit'] else ''}, "
        f"{r['rows_done']}/{r['rows_total']} rows in {r['wall_s']} s | steady {num('steady_audio_s_per_s')} "
        f"audio-s/s, {num('steady_rows_per_s')} rows/s over {num('steady_window_s')} s | "
        f"GPU busy {num('gpu_busy_steady', '{}%')} (whole run {num('gpu_busy_whole_run', '{}%')}), "
        f"node CPU busy {num('cpu_busy_steady', '{}%')} | start-up {num('startup_s', '{} s')}, "
        f"tail {num('tail_s', '{} s')} | peak memory {r['peak_in_use_gb']} GB in use "
        f"(RSS sum {r['peak_rss_sum_gb']}), GPU {num('gpu_mem_peak_mib', '{:.0f} MiB')}" + roles_line(r)
    )


ROLE_SHORT = {
    "decode tasks": "decode",
    "model actor": "model actors",
    "read tasks": "read",
    "write tasks": "write",
    "driver": "driver",
    "workers between tasks (start-up, imports)": "idle/starting workers",
    "Ray Data's own actors": "Ray Data actors",
    "Ray's system processes (GCS, raylet, agents)": "Ray system",
}


def roles_line(r: dict) -> str:
    """'\n  steady cores by role: decode 9.1 (720 us/audio-s), ...', or '' without a steady window."""
    cores, per = r.get("cores_by_role_steady"), r.get("cpu_us_per_audio_s_by_role", {})
    if not cores:
        return ""
    parts = [
        f"{ROLE_SHORT.get(k, k)} {v:.2f}" + (f" ({per[k]} us/audio-s)" if k in per else "")
        for k, v in sorted(cores.items(), key=lambda kv: -kv[1])
    ]
    return "\n  steady cores by role: " + ", ".join(parts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True, help="corpus-ROWS.json by bench/gpu_corpus.py")
    p.add_argument("--name", required=True)
    p.add_argument("--deadline", type=float, required=True, help="seconds until SIGTERM")
    p.add_argument(
        "--grace", type=float, default=15.0, help="seconds from SIGTERM until the session is killed"
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "auto", "cpu"])
    p.add_argument("--model", default="base", choices=["base", "feed"])
    p.add_argument("--top-at", type=float, default=40.0, help="seconds in, the `top` snapshot")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="job override k=v")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.model == "base":
        base_model_dir(a.work / "model")  # written before the clock starts
    r = run(a)
    with open(a.work / "gpu_jobs.jsonl", "a") as f:
        f.write(json.dumps(r, default=str) + "\n")
    print(line(r))
    if r["rc"] != 0 and not r["deadline_hit"]:
        print(
            "  log tail:\n"
            + "".join(f"    {x}\n" for x in (a.work / f"{a.name}.log").read_text().splitlines()[-8:])
        )


if __name__ == "__main__":
    main()
