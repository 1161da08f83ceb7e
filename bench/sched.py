"""Why Ray Data runs as many tasks per stage as it does: each operator's state over one job.

    python bench/sched.py [--clips short|mixed] [--rows 8000] [--cores 2] [--set KEY=VALUE ...]

Runs `jobs/extract.py`'s `main` in a child process (own embedded Ray) on the feed corpus and the
near-free model of `bench/feed.py`, with Ray Data's operator selection wrapped: at every scheduling
step it records, per operator, how many of its tasks run, whether input waits for it, and which
backpressure policy (if any) holds it back; for the resource budget, whether the operator's CPU share
or its object-store share is what is short. Prints each operator's share of the run's time in each
state from its first task on (weighted by the time to its next step), and when that first task came.
Beside it, the model actor's threads as the kernel's scheduler counts them (/proc/<pid>/task/*/schedstat):
time on a CPU, time runnable but waiting for a core, and the rest of its life blocked (waiting for its
next call, for the GIL, for the object store).

It reads Ray Data internals (Ray 2.60: `streaming_executor_state.get_eligible_operators`, the policy
each operator records as holding it, the op resource allocator's budgets): a diagnostic, not a contract.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import CLIPS, ROOT, clip_files, feed_job_config, feed_model_dir, machine, many_rows_manifest


def child(config: str, overrides: list[str], report: str) -> int:
    import ray.data._internal.execution.streaming_executor_state as state_module

    from pipeline.cli.extract import main

    steps: list[tuple[float, str, str]] = []
    select = state_module.get_eligible_operators

    def traced(topology, policies, **kwargs):
        eligible = select(topology, policies, **kwargs)  # sets each op's backpressure verdict
        now = time.monotonic()
        budget = next((p for p in policies if p.name == "ResourceBudget"), None)
        allocator = getattr(getattr(budget, "_resource_manager", None), "_op_resource_allocator", None)
        for op, op_state in topology.items():
            steps.append((now, op.name, describe(op, op_state, allocator)))
        return eligible

    state_module.get_eligible_operators = traced
    argv = ["--config", config]
    for o in overrides:
        argv += ["--set", o]
    try:
        return main(argv)
    finally:
        Path(report).write_text(json.dumps(shares(steps)))


def describe(op, op_state, allocator) -> str:
    """The op's state in this step. The policy that held it is the one Ray Data's own selection just
    recorded: asking the policies again would run them twice (one keeps running averages)."""
    text = f"running {op.num_active_tasks()}, input {'waits' if op_state.has_pending_bundles() else 'none'}"
    why = getattr(op, "_task_submission_backpressure_policy", None)
    if why is None:
        return text
    if why == "ResourceBudget" and allocator is not None:
        budget, need = allocator.get_budget(op), op.incremental_resource_usage()
        if budget is not None and need.cpu > budget.cpu:
            why += f": CPU share short (next task needs {need.cpu:g}, {max(budget.cpu, 0):.2f} left)"
        elif budget is not None and need.object_store_memory > budget.object_store_memory:
            why += ": object-store share short"
        else:
            why += ": output budget spent"
    return f"{text}, held by {why}"


def shares(steps: list[tuple[float, str, str]]) -> dict[str, dict]:
    """Per operator: the seconds from the first scheduling step to its first running task (start-up:
    workers, actors), then its time in each state from there to its last step, as shares."""
    by_op: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for t, name, text in steps:
        by_op[name].append((t, text))
    t_first = min((t for t, _, _ in steps), default=0.0)
    out = {}
    for name, seen in by_op.items():
        start = next((i for i, (_, text) in enumerate(seen) if not text.startswith("running 0")), len(seen))
        spent: collections.Counter = collections.Counter()
        for (t, text), (t_next, _) in itertools.pairwise(seen[start:]):
            spent[text] += t_next - t
        total = sum(spent.values()) or 1.0
        first_task = seen[start][0] - t_first if start < len(seen) else None
        out[name] = {
            "first_task_s": None if first_task is None else round(first_task, 2),
            "states": {text: round(s / total, 4) for text, s in spent.most_common()},
        }
    return out


class ActorThreads(threading.Thread):
    """Samples the schedstat of every thread of the model actor's process (title ray::MapWorker...)."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.first: dict[str, tuple[str, int, int, float]] = {}
        self.last: dict[str, tuple[str, int, int, float]] = {}

    def run(self) -> None:
        pid = None
        while not self.stop.wait(self.period):
            pid = pid or _model_actor_pid()
            if pid is None:
                continue
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                    on, wait = map(int, Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:2])
                    seen = (comm, on, wait, time.monotonic())
                    self.first.setdefault(tid, seen)
                    self.last[tid] = seen
            except OSError:  # the actor ended
                pid = None

    def table(self, top: int = 3) -> list[tuple[str, float, float, float]]:
        """(thread, on-CPU s, waiting for a core s, life s) of the busiest threads."""
        rows = []
        for tid, (comm, on, wait, t) in self.last.items():
            _, on0, wait0, t0 = self.first[tid]
            rows.append((f"{comm} {tid}", (on - on0) / 1e9, (wait - wait0) / 1e9, t - t0))
        return sorted(rows, key=lambda r: -r[1])[:top]


def _model_actor_pid() -> str | None:
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MapWorker"):
                return pid
        except OSError:
            continue
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", choices=list(CLIPS), default="short")
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="ray.num_cpus of the job")
    p.add_argument("--distinct", type=int, default=12, help="distinct clips per format")
    p.add_argument("--top", type=int, default=6, help="states shown per operator")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-feed-cache")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-sched")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "REPORT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        sys.exit(child(a.child[0], a.overrides, a.child[1]))

    a.out.mkdir(parents=True, exist_ok=True)
    files = clip_files(a.cache, a.distinct, *CLIPS[a.clips])
    manifest = a.out / f"manifest-{a.clips}-{a.rows}.jsonl"
    many_rows_manifest(manifest, files, a.rows)
    model = feed_model_dir(a.cache / "model")
    config = feed_job_config(a.out / "job.yaml", manifest, model, a.out / "job", cores=a.cores)
    report = a.out / "sched.json"
    cmd = [sys.executable, __file__, "--child", str(config), str(report)]
    for o in a.overrides:
        cmd += ["--set", o]
    t0 = time.time()
    threads = ActorThreads()
    threads.start()
    with open(a.out / "job.log", "w") as log:
        rc = subprocess.call(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    threads.stop.set()
    threads.join()
    if rc != 0:
        raise SystemExit(f"job failed (exit {rc}); see {a.out / 'job.log'}")
    print(json.dumps(machine()))
    print(
        f"{a.rows} rows of {a.clips} clips, {a.cores} CPUs, wall {time.time() - t0:.1f} s, overrides {a.overrides}"
    )
    for name, op in json.loads(report.read_text()).items():
        if op["first_task_s"] is None:  # the input op: its blocks exist before the first step
            continue
        print(f"\n{name}: first task {op['first_task_s']} s after the executor's first step; from then on:")
        print("| state | share of its time |\n|---|---|")
        for text, share in list(op["states"].items())[: a.top]:
            print(f"| {text} | {share:.1%} |")
    print("\nthe model actor's busiest threads (the first is the one that runs the model)")
    print("| thread | on a CPU s | waiting for a core s | blocked s | seen for s |\n|---|---|---|---|---|")
    for name, on, wait, life in threads.table():
        print(f"| {name} | {on:.2f} | {wait:.2f} | {life - on - wait:.2f} | {life:.1f} |")
    print(f"\n-> {report}")


if __name__ == "__main__":
    main()
