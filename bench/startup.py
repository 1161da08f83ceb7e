"""Where the time before the first batch goes: the job's start-up, phase by phase.

    python bench/startup.py [--clips 8] [--repeats 3] [--size base|tiny] [--ray embedded|cluster|submit]
                            [--cores N] [--set KEY=VALUE ...]

Runs `jobs/extract.py`'s `main` in a child process with the driver's start-up steps timed by wrappers.
Where its Ray comes from (`--ray`):
- `embedded` (default): the job starts its own local Ray, as a user's first run or `make demo`;
- `cluster`: the child joins a `ray start --head` cluster of `--cores` CPUs that this script starts
  once before the runs (the first run is then the first job on a fresh cluster) and kills after them;
- `submit`: the same cluster, and each run goes through `ray job submit --working-dir` as the README's
  recipe does; times then count from the submit command's start.

It also reads Ray's own task events (`ray.timeline()`, from the
GCS) before the job shuts its Ray down: when each actor's constructor (the model actor's: the model
load) ran, and when the model actor's first batch started. Every time is seconds from the child
process's exec, read from /proc. The first batch is the first `submit` call of the model actor (Ray
Data's MapWorker running EmotionPredictor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, base_model_dir, corpus, head_node, machine, session_cpu_ticks

TICK = os.sysconf("SC_CLK_TCK")

DRIVER_STEPS = {  # pipeline.run's names -> the phase they are
    "discover": "list sources",
    "init_ray": "Ray start (embedded) or connect",
    "_check_model": "model check (driver; beside an embedded Ray's start, before a connect)",
    "_count": "count manifest",
    "place_model": "place model",
    "_open_output": "open output",
    "build_dataset": "build dataset",
    "ActorWatch": "actor watch (first GCS poll)",
}


def process_start_epoch() -> float:
    """When this process was exec'd, from /proc (clock ticks since boot)."""
    stat = Path("/proc/self/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def child(config: str, overrides: list[str], report: str) -> int:
    t_exec = process_start_epoch()
    marks: dict[str, list[float]] = {}
    t = time.time()
    import ray

    import pipeline.run as run_module
    from pipeline.cli.extract import main

    marks["imports (ray, pipeline)"] = [t - t_exec, time.time() - t_exec]

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.time() - t_exec
            try:
                return fn(*a, **k)
            finally:
                marks.setdefault(DRIVER_STEPS[name], [t0, time.time() - t_exec])

        return wrapper

    for name in DRIVER_STEPS:
        setattr(run_module, name, timed(name, getattr(run_module, name)))

    events: list[dict] = []
    shutdown = ray.shutdown

    def read_events_then_shutdown(*a, **k):
        try:  # the GCS's task profile events (no dashboard needed): "task::<name>" spans, microseconds
            for e in ray.timeline():
                if str(e.get("cat", "")).startswith("task::"):
                    start = e["ts"] / 1e6 - t_exec
                    events.append(
                        {"name": e["cat"][len("task::") :], "start": start, "end": start + e["dur"] / 1e6}
                    )
        except Exception as e:  # noqa: BLE001 - report what could not be read
            events.append({"error": repr(e)})
        return shutdown(*a, **k)

    ray.shutdown = read_events_then_shutdown
    argv = ["--config", config]
    for o in overrides:
        argv += ["--set", o]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    marks["exit"] = [time.time() - t_exec, time.time() - t_exec]
    Path(report).write_text(json.dumps({"exec": t_exec, "marks": marks, "tasks": events}))
    return int(rc or 0)


def phases(report: dict) -> dict[str, tuple[float, float]]:
    """The driver's steps, and from Ray's events: the first task of each kind, each actor's
    constructor, and the model actor's first batch (not its other calls: Ray Data asks a new actor
    where it is before it hands it a batch)."""
    out = {k: tuple(v) for k, v in report["marks"].items()}
    tasks = [t for t in report["tasks"] if "name" in t]
    firsts: dict[str, tuple[float, float]] = {}
    for t in sorted(tasks, key=lambda t: t["start"] or 1e9):
        if t["start"] <= 0:
            continue
        if t["name"].endswith(".__init__"):
            key = f"actor constructor: {t['name'].removesuffix('.__init__')}"
        elif "EmotionPredictor" in t["name"]:
            if not t["name"].endswith(".submit"):
                continue
            key = "first model batch"
        else:
            key = f"first task: {t['name']}"
        firsts.setdefault(key, (t["start"], t["end"]))
    return {**out, **firsts}


IDLE_KINDS = ("ray::IDLE", "default_worker.py")  # a worker before its first task


def process_kind(pid: int) -> str | None:
    """What a process of the job is, from the title Ray gives it or the script it runs (None: gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    title = argv[0]
    if title.startswith("ray::"):
        return title.split("(")[0].split(".")[0]
    if title.startswith("ray-dashboard-"):
        return "dashboard modules"
    if title.endswith(("python", "python3")):
        args = [x for x in argv[1:] if x and not x.startswith("-")]  # -u, -B
        if "-c" in argv:
            return "python -c (Ray's helpers)"
        script = Path(args[0]).name if args else title
        return "driver" if script == Path(__file__).name else script
    return Path(title.split(" ")[0]).name


def session_cpu(
    proc: subprocess.Popen, t0: float, others: tuple[int, ...] = (), period_s: float = 0.1
) -> list[tuple[float, dict]]:
    """Until `proc` exits: (seconds since t0, {pid: (CPU seconds since t0, kind)}) for every process
    of its session and of the sessions `others` (a running cluster's, whose processes the job uses)."""
    seen: dict[int, int] = {}
    before: dict[int, int] = {}
    for sid in others:
        session_cpu_ticks(sid, before)
    kinds: dict[int, str] = {}
    out = []
    while proc.poll() is None:
        for sid in (proc.pid, *others):
            session_cpu_ticks(sid, seen)
        for pid in seen:  # a worker is named by the first task Ray gives it; "?": gone before it was seen
            if kinds.get(pid, IDLE_KINDS[0]) in IDLE_KINDS:
                kinds[pid] = process_kind(pid) or kinds.get(pid, "?")
        out.append(
            (
                time.time() - t0,
                {pid: ((t - before.get(pid, 0)) / TICK, kinds[pid]) for pid, t in seen.items()},
            )
        )
        time.sleep(period_s)
    return out


def cpu_before(samples: list[tuple[float, dict]], t: float) -> dict[str, float]:
    """CPU seconds used by time `t` (the last sample at or before it), by process kind."""
    last = max((x for x in samples if x[0] <= t), key=lambda x: x[0], default=(0.0, {}))[1]
    by: dict[str, float] = {}
    for cpu, kind in last.values():
        by[kind] = by.get(kind, 0.0) + cpu
    return by


def one_run(a, r: int, cfg: Path, env: dict | None, jobs: str | None, others: tuple[int, ...]):
    """One job in a child process -> (wall s, its phases, CPU s by process kind before its first batch).
    Through `ray job submit` (`jobs`: the job server), the child is the job's entrypoint, and its times
    are shifted to count from the submit command's start."""
    report = (a.work / f"report-{r}.json").resolve()
    args = ["--child", str(cfg.resolve()), str(report), str((a.work / "overrides.json").resolve())]
    cmd = [sys.executable, __file__, *args]
    if a.ray == "submit":  # the entrypoint runs the copy of this script in the job's working dir
        ray_bin = str(Path(sys.executable).parent / "ray")
        cmd = [ray_bin, "job", "submit", "--address", jobs, "--working-dir", str(ROOT), "--"]
        cmd += ["python", "bench/startup.py", *args]
    t0 = time.time()
    with open(a.work / f"job-{r}.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log if a.ray == "submit" else subprocess.DEVNULL,  # submit prints the job's log
            stderr=log,
            env=env,
            start_new_session=True,  # Ray's processes join the child's session: its CPU is theirs too
        )
        cpu = session_cpu(proc, t0, others)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"run {r}: exit {proc.returncode}, see {a.work}/job-{r}.log")
    rep = json.loads(report.read_text())
    got = phases(rep)
    if a.ray == "submit":
        shift = rep["exec"] - t0
        got = {k: (s + shift, e + shift) for k, (s, e) in got.items()}
        got["ray job submit -> the driver's exec"] = (0.0, shift)
    return wall, got, cpu_before(cpu, got.get("first model batch", (float("nan"),))[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-startup")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--ray", choices=["embedded", "cluster", "submit"], default="embedded")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        config, report, overrides = a.child
        sys.exit(child(config, json.loads(Path(overrides).read_text()), report))

    a.work.mkdir(parents=True, exist_ok=True)
    if a.size == "base":
        model = base_model_dir(a.work / "model-base")
    else:
        from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

        model = a.work / "model-tiny"
        if not (model / "model.pt").exists():
            write_checkpoint(random_model(tiny()), model, "hub")
    manifest, audio_s = corpus(a.work / "corpus", a.clips, max_s=10.0)
    cfg = a.work / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\nmodel:\n  source: {model}\noutput:\n  path: {a.work}/out\n  mode: overwrite\n"
        + (f"ray:\n  num_cpus: {a.cores}\n" if a.ray == "embedded" else "")
    )
    print(json.dumps(machine()), flush=True)
    (a.work / "overrides.json").write_text(json.dumps(a.overrides))
    cluster = (
        head_node(a.cores, a.work) if a.ray != "embedded" else contextlib.nullcontext((None, None, None))
    )
    with cluster as (head, env, jobs):
        runs, busy = [], []
        for r in range(a.repeats):
            wall, got, by_kind = one_run(a, r, cfg, env, jobs, (head,) if head else ())
            runs.append(got)
            first = got.get("first model batch", (float("nan"),))[0]
            used = sum(by_kind.values())
            busy.append((used, by_kind))
            print(
                f"[run {r + 1}] wall {wall:.1f} s, first batch at {first:.1f} s; CPU used by then by the job's "
                f"processes (driver, Ray, workers): {used:.1f} s = {used / first:.2f} of {a.cores} cores",
                flush=True,
            )
    keys = sorted(
        {k for run in runs for k in run}, key=lambda k: statistics.median(r[k][0] for r in runs if k in r)
    )
    print(
        f"\n{a.clips} clips, {audio_s:.0f} s of audio, {a.size} model; seconds from exec, median of {len(runs)}"
    )
    print("| phase | starts | ends | took |\n|---|---|---|---|")
    for k in keys:
        s = statistics.median(r[k][0] for r in runs if k in r)
        e = statistics.median(r[k][1] for r in runs if k in r)
        print(f"| {k} | {s:.1f} | {e:.1f} | {e - s:.1f} |")
    used = statistics.median(u for u, _ in busy)
    print(
        f"\nCPU used by the job's processes before the first batch (median): {used:.1f} s; on "
        f"{a.cores} cores that alone takes at least {used / a.cores:.1f} s"
    )
    kinds = sorted(
        {k for _, b in busy for k in b}, key=lambda k: -statistics.median(b.get(k, 0) for _, b in busy)
    )
    print("| process (title or script) | CPU s before the first batch (median) |\n|---|---|")
    for k in kinds:
        print(f"| {k} | {statistics.median(b.get(k, 0.0) for _, b in busy):.2f} |")


if __name__ == "__main__":
    main()
