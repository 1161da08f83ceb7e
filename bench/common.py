"""Shared helpers for the benchmarks (run by hand; numbers go to bench/RESULTS.md)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# docs/model.md, "Compute": forward GFLOPs per second of audio (short clips), base and large
GFLOP_PER_AUDIO_S = {768: 15.0, 1024: 22.5}


def machine() -> dict:
    import torch

    cpu, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        # what decides the fast paths: AVX-512, bfloat16 dot products, AMX tiles
        "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_fp16"}),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def base_model_dir(out: Path, seed: int = 0) -> Path:
    """A random-init emotion2vec+ base-size model (D=768, 4+8 blocks, 9-way head) in the hub layout."""
    from pipeline.model.config import base
    from pipeline.testing.checkpoints import random_model, write_checkpoint

    if not (out / "model.pt").exists():
        write_checkpoint(random_model(base(num_classes=9), seed=seed), out, "hub")
    return out


def corpus(out: Path, n: int, min_s: float = 1.0, max_s: float = 20.0, seed: int = 0) -> tuple[Path, float]:
    """`n` speech clips of min_s..max_s seconds (espeak-ng sentences joined), manifest.jsonl; cached."""
    import random

    import numpy as np
    import soundfile as sf

    from pipeline.testing.samples import SENTENCES, STYLES, VOICES, synthesize

    manifest = out / "manifest.jsonl"
    if manifest.exists():
        rows = [json.loads(x) for x in manifest.read_text().splitlines()]
        if len(rows) == n:
            return manifest, sum(r["duration"] for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pieces = []
    for i, text in enumerate(SENTENCES):
        style = list(STYLES)[i % len(STYLES)]
        p = synthesize(
            text,
            out / "pieces" / f"{i}.wav",
            voice=VOICES[i % len(VOICES)],
            pitch=STYLES[style][0],
            speed=STYLES[style][1],
        )
        pieces.append(sf.read(str(p), dtype="float32")[0])
    rows, total = [], 0.0
    for i in range(n):
        target = rng.uniform(min_s, max_s)
        x = np.concatenate([pieces[rng.randrange(len(pieces))] for _ in range(int(target) + 2)])[
            : int(target * 16000)
        ]
        path = out / "clips" / f"{i:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, 16000)
        rows.append({"id": f"c{i:05d}", "path": f"clips/{i:05d}.flac", "duration": len(x) / 16000})
        total += len(x) / 16000
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, total


def _session_pids(sid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[3]) == sid:
                pids.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _shm_used() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def session_memory(sid: int, shm_before: int = 0) -> tuple[int, int]:
    """(summed RSS, memory in use) in bytes of every process in session `sid` (a job started with
    start_new_session=True and everything it spawned: raylet, GCS, workers).

    Summed RSS counts a shared page (Ray's object store, the torch libraries) once per process that
    maps it, so it overstates. "In use" is the processes' private memory (RssAnon) plus the growth of
    /dev/shm, where Ray's object store lives, each counted once. Both come from counters the kernel
    keeps (/proc/PID/status, statvfs): cheap to read, unlike PSS (smaps_rollup walks every page table
    and, sampled twice a second, took ~70 % of a core from the job on this 2-core box)."""
    rss = anon = 0
    for pid in _session_pids(sid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return rss, anon + max(0, _shm_used() - shm_before)


class Sampler:
    """Calls `sample()` every `period_s` in a daemon thread while the `with` block runs."""

    def __init__(self, period_s: float = 0.5):
        self.period = period_s
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool:
        """Take one sample; False stops sampling."""
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set() and self.sample() is not False:
            time.sleep(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class GpuBusy(Sampler):
    """nvidia-smi's utilization.gpu and memory.used of GPU 0; `.samples` (busy %), `.mib` (memory used)
    and `.times` (time.monotonic() of each); no samples where there is no nvidia-smi."""

    CMD = ("nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "--id=0")

    def __init__(self, period_s: float = 0.5):
        super().__init__(period_s)
        self.samples: list[float] = []
        self.mib: list[float] = []
        self.times: list[float] = []

    def sample(self) -> bool:
        try:
            out = subprocess.run(self.CMD, capture_output=True, text=True, timeout=10).stdout
            busy, mib = (float(v) for v in out.strip().split(","))
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return False
        self.samples.append(busy)
        self.mib.append(mib)
        self.times.append(time.monotonic())
        return True

    def summary(self) -> str:
        busy = [x for x in self.samples if x > 0]  # from the first batch on: start-up excluded
        if not busy:
            return "GPU busy: no samples"
        steady = sorted(busy)[len(busy) // 2]
        return f"GPU busy: mean {sum(busy) / len(busy):.0f}% / median {steady:.0f}% over {len(busy)} samples"


class NodeCpu(Sampler):
    """The whole node's CPU busy % (all processes, from /proc/stat) over each period; `.samples`, `.times`."""

    def __init__(self, period_s: float = 1.0):
        super().__init__(period_s)
        self.samples: list[float] = []
        self.times: list[float] = []
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # all ticks, idle + iowait ticks

    def sample(self) -> bool:
        now = self._read()
        total, idle = now[0] - self._last[0], now[1] - self._last[1]
        if total > 0:
            self.samples.append(100.0 * (1 - idle / total))
            self.times.append(time.monotonic())
        self._last = now
        return True


class RoleCpu(Sampler):
    """The CPU of every process of session `sid` by role (`process_role`), cumulative, every period:
    `.times` and `.ticks` (role -> ticks so far) for `role_cpu_between`."""

    def __init__(self, sid: int, period_s: float = 0.5):
        super().__init__(period_s)
        self.sid = sid
        self._last: dict[int, int] = {}
        self._total: dict[str, int] = {}
        self.times: list[float] = []
        self.ticks: list[dict[str, int]] = []

    def sample(self) -> bool:
        session_cpu_by_role(self.sid, self._last, self._total)
        self.times.append(time.monotonic())
        self.ticks.append(dict(self._total))
        return True


def role_cpu_between(cpu: RoleCpu, t0: float, t1: float) -> dict[str, float]:
    """CPU-seconds by role between the samples nearest to t0 and t1 ({} with fewer than two)."""
    if len(cpu.times) < 2:
        return {}
    a = min(range(len(cpu.times)), key=lambda i: abs(cpu.times[i] - t0))
    b = min(range(len(cpu.times)), key=lambda i: abs(cpu.times[i] - t1))
    if b <= a:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    first, last = cpu.ticks[a], cpu.ticks[b]
    return {k: (v - first.get(k, 0)) / tick for k, v in last.items() if v > first.get(k, 0)}


def mean_between(times: list[float], values: list[float], t0: float, t1: float) -> float | None:
    """Mean of the samples taken between t0 and t1 (monotonic seconds); None when there are none."""
    inside = [v for t, v in zip(times, values, strict=True) if t0 <= t <= t1]
    return sum(inside) / len(inside) if inside else None


class PeakMemory(Sampler):
    """Samples `session_memory`; `.rss` and `.in_use` are the highest values seen."""

    def __init__(self, sid: int, period_s: float = 0.5):
        super().__init__(period_s)
        self.sid, self.rss, self.in_use = sid, 0, 0
        self._shm0 = _shm_used()

    def sample(self) -> bool:
        rss, in_use = session_memory(self.sid, self._shm0)
        self.rss, self.in_use = max(self.rss, rss), max(self.in_use, in_use)
        return True


def run_job(config: Path, overrides: list[str], log: Path) -> tuple[int, float, PeakMemory, dict]:
    """Run jobs/extract.py in a subprocess (own embedded Ray); -> (exit code, wall s, peak memory of
    the whole process tree incl. Ray (.rss, .in_use bytes), _run.json)."""
    import yaml

    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        with PeakMemory(proc.pid) as mem:
            rc = proc.wait()
    wall = time.time() - t0
    cfg = yaml.safe_load(config.read_text())
    out = cfg["output"]["path"]
    for o in overrides:
        if o.startswith("output.path="):
            out = o.split("=", 1)[1]
    run = json.loads((Path(out) / "_run.json").read_text()) if (Path(out) / "_run.json").exists() else {}
    return rc, wall, mem, run


# -- a cheap corpus of many rows over a few real files (bench/feed.py) -------------------------------

# name -> (suffix, sample rate, channels): the formats a mixed corpus draws from
FORMATS = {"wav": (".wav", 16000, 1), "flac": (".flac", 44100, 2), "mp3": (".mp3", 48000, 1)}
# corpus name -> (shortest, longest) clip in seconds
CLIPS = {"mixed": (1.0, 20.0), "short": (0.5, 0.5)}


def speech_pieces(cache: Path) -> list:
    """The espeak-ng sentences of pipeline.testing.samples as 16 kHz float32 arrays (synthesised once)."""
    import soundfile as sf

    from pipeline.testing.samples import SENTENCES, STYLES, VOICES, synthesize

    pieces = []
    for i, text in enumerate(SENTENCES):
        style = list(STYLES)[i % len(STYLES)]
        p = cache / "pieces" / f"{i}.wav"
        if not p.exists():
            pitch, speed = STYLES[style]
            synthesize(text, p, voice=VOICES[i % len(VOICES)], pitch=pitch, speed=speed)
        pieces.append(sf.read(str(p), dtype="float32")[0])
    return pieces


def clip_files(
    cache: Path,
    per_format: int,
    min_s: float,
    max_s: float,
    formats=tuple(FORMATS),
    seed: int = 0,
    encode=None,
    workers: int = 1,
) -> list[tuple[Path, float]]:
    """`per_format` distinct speech clips of min_s..max_s seconds in each of `formats` (16 kHz mono wav,
    44.1 kHz stereo flac, 48 kHz mono mp3), written once by `encode` (default: sox; `encode_soundfile`
    where there is no sox) in `workers` processes and kept in `cache`; -> [(file, duration at 16 kHz)],
    the formats interleaved."""
    import random

    import numpy as np

    folder = cache / f"clips-{min_s:g}-{max_s:g}-s{seed}"
    pieces = None
    rng = random.Random(seed)
    out, todo = [], []
    for k in range(per_format):
        for name in formats:
            suffix, sr, ch = FORMATS[name]
            target = rng.uniform(min_s, max_s)
            order = [rng.randrange(24) for _ in range(int(target / 1.5) + 2)]
            path = folder / f"{k:03d}-{name}{suffix}"
            if not path.exists():
                pieces = pieces or speech_pieces(cache)
                x = np.concatenate([pieces[j % len(pieces)] for j in order])[: int(target * 16000)]
                todo.append((x, path, sr, ch))
            out.append((path, round(target, 3)))
    folder.mkdir(parents=True, exist_ok=True)
    encode = encode or encode_sox
    if workers > 1 and len(todo) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.starmap(encode, todo, chunksize=4)
    else:
        for job in todo:
            encode(*job)
    return out


def encode_sox(x, path: Path, sr: int, channels: int) -> None:
    """16 kHz float32 speech `x` -> `path` at `sr` Hz (channel k scaled 0.9, 0.6), by sox."""
    import soundfile as sf

    tmp = path.with_suffix(".tmp.wav")
    sf.write(str(tmp), x, 16000, subtype="FLOAT")
    remix = ["remix", "1v0.9", "1v0.6"] if channels == 2 else []
    fmt = ["-b", "16"] if path.suffix == ".wav" else []
    subprocess.run(["sox", "-V1", "-D", str(tmp), *fmt, "-r", str(sr), str(path), *remix], check=True)
    tmp.unlink()


def encode_soundfile(x, path: Path, sr: int, channels: int) -> None:
    """As `encode_sox`, with soxr and soundfile alone (a GPU node has no sox)."""
    import numpy as np
    import soundfile as sf
    import soxr

    y = soxr.resample(x, 16000, sr) if sr != 16000 else x
    if channels == 2:
        y = np.stack([0.9 * y, 0.6 * y], 1)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), y, sr, format=path.suffix[1:].upper())
    tmp.rename(path)  # a file cut short by a killed run is never taken for a finished one


def many_rows_manifest(path: Path, files: list[tuple[Path, float]], rows: int) -> float:
    """A jsonl manifest of `rows` distinct ids cycling over `files`; -> nominal audio seconds."""
    total = 0.0
    with open(path, "w") as f:
        chunk = []
        for i in range(rows):
            p, d = files[i % len(files)]
            chunk.append(f'{{"id": "r{i:08d}", "path": "{p}"}}\n')
            total += d
            if len(chunk) >= 65536:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return total


def feed_model_dir(out: Path) -> Path:
    """A near-free random-init model: D=32, 1+1 blocks, 32-channel CNN, 9-way head (hub layout)."""
    import dataclasses

    from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

    if not (out / "model.pt").exists():
        cfg = dataclasses.replace(tiny(embed_dim=32, num_heads=4), depth=1, prenet_depth=1)
        write_checkpoint(random_model(cfg, seed=0), out, "hub")
    return out


def feed_job_config(
    path: Path,
    manifest: Path,
    model: Path,
    out: Path,
    *,
    cores: int,
    mode: str = "overwrite",
    rows_per_unit: int = 1000,
    torch_threads: int = 1,
) -> Path:
    """Write the job config the feed benchmarks run: `manifest` through `model` on the CPU into `out`,
    on an embedded Ray of `cores` CPUs."""
    path.write_text(
        f"input:\n  manifest: {manifest}\n  rows_per_unit: {rows_per_unit}\n"
        f"model:\n  source: {model}\n  device: cpu\n  torch_threads: {torch_threads}\n"
        f"output:\n  path: {out}\n  mode: {mode}\n"
        f"ray:\n  num_cpus: {cores}\n"
    )
    return path


def session_cpu_ticks(sid: int, seen: dict[int, int]) -> None:
    """Record into `seen` (pid -> utime + stime ticks) every process of session `sid`; a process's
    last reading before it exits is what counts."""
    for pid in _session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            seen[pid] = max(seen.get(pid, 0), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue


def session_cpu_by_role(sid: int, last: dict[int, int], by_role: dict[str, int]) -> None:
    """Add to `by_role` the CPU ticks each process of session `sid` used since the last call (`last`:
    pid -> ticks), under the role its title (Ray sets it to the running task) says it has now."""
    for pid in _session_pids(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        role = process_role([a.decode(errors="replace") for a in argv])
        by_role[role] = by_role.get(role, 0) + ticks - last.get(pid, 0)
        last[pid] = ticks


def process_role(argv: list[str]) -> str:
    title = argv[0] if argv else ""
    if title.startswith("ray::"):
        for key, role in (
            ("prepare_block", "decode tasks"),
            ("EmotionPredictor", "model actor"),
            ("read_task", "read tasks"),
            ("write_parts", "write tasks"),
            ("IDLE", "workers between tasks (start-up, imports)"),
        ):
            if key in title:
                return role
        return "Ray Data's own actors"
    script = argv[1].rsplit("/", 1)[-1] if title.endswith(("python", "python3")) and len(argv) > 1 else title
    if script == "extract.py":
        return "driver"
    if script == "default_worker.py":
        return "workers between tasks (start-up, imports)"
    return "Ray's system processes (GCS, raylet, agents)"


def proc_status_kb(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` field in kB (VmHWM, VmRSS), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a job started with start_new_session=True)."""
    import signal

    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@contextlib.contextmanager
def head_node(cores: int, work: Path):
    """A `ray start --head` cluster of `cores` CPUs, with its job server, in a session of its own with
    its own auth token and temp dir; yields (its session id, the environment a client needs:
    RAY_ADDRESS and the token, the job server's URL). Killed by its session afterwards, never with
    `ray stop` (other Ray instances may share the machine)."""
    import shutil
    import uuid

    gcs, jobs = _free_port(), _free_port()
    token = (work / "ray_auth_token").resolve()  # absolute: a submitted job runs in its working dir
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    bindir = str(Path(sys.executable).parent)  # a submitted job's `python` is this one
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(bindir, "ray")
    temp = f"/tmp/ray_e2v_bench_{uuid.uuid4().hex[:8]}"
    cmd = [ray_bin, "start", "--head", "--num-cpus", str(cores), "--num-gpus", "0", "--port", str(gcs)]
    cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(jobs)]
    cmd += ["--node-ip-address", "127.0.0.1", "--temp-dir", temp, "--disable-usage-stats"]
    leader = subprocess.Popen(
        ["setsid", "--wait", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sid = leader.pid  # setsid --wait: the leader's pid is the new session id
    try:
        out, _ = leader.communicate(timeout=120)
        if leader.returncode != 0:
            raise RuntimeError(f"ray start failed: {out.decode(errors='replace')[-2000:]}")
        url = f"http://127.0.0.1:{jobs}"
        deadline = time.time() + 60
        while subprocess.run(
            [ray_bin, "job", "list", "--address", url], env=env, capture_output=True
        ).returncode:
            if time.time() > deadline:  # the job server answers a few seconds after `ray start` returns
                raise RuntimeError(f"Ray's job server at {url} did not answer within 60 s")
            time.sleep(1)
        yield sid, {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, url
    finally:
        kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
