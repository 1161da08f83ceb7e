"""The streaming trainer at the scale the job produces: generate a frames output of >= 10 GB in the
job's schema (directly, not through the model), then, each in its own process so that peak RSS is its
own: a plain read of the same data (the reader's limit), the streaming reader without a model, and one
epoch of the frame recipe streaming. Side by side, one run.

    PYTHONPATH=$PWD python bench/train_stream.py --dir /tmp/e2v-bench-frames --gb 10 [--keep]

The data: D 768 float16 frames (emotion2vec base), clips of 1-3 s (50-150 frames), files sized as the
job sizes them (output.rows_per_file 2000, output.max_file_mb 256: ~1,700 rows, ~256 MB a file) and
encoded by the job's own writer function (pipeline/writer.py encode_parquet, zstd). Frame values come
from one random pool at random offsets (generation is I/O bound on 2 cores, not RNG bound). Labels are
random over 4 classes; `split` is train for all rows but a handful per file kept for validation / test
(so the epoch is nearly all training). The generated output is deleted afterwards unless --keep.

Results: the trainer's peak RSS (the whole process: torch, catalog, buffer, prefetch), rows/s of the
epoch's training loop, rows/s of the plain read, and how long the model waited for data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
D = 768
LABELS = ["ang", "hap", "neu", "sad"]


def generate(
    out: Path, gb: float, rows_per_file: int = 2000, max_file_mb: float = 256.0, seed: int = 0
) -> dict:
    import pyarrow as pa

    from pipeline.schema import output_schema
    from pipeline.writer import encode_parquet

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((400_000, D), dtype=np.float32).astype(np.float16)  # ~600 MB of frames
    passthrough = pa.schema([("emotion", pa.string()), ("session", pa.int64()), ("split", pa.string())])
    schema = output_schema(D, 9, True, passthrough)
    rows_fit = int(max_file_mb * 2**20 / (100 * D * 2))  # mean 100 frames a row
    per_file = min(rows_per_file, rows_fit)
    target = gb * 1e9
    written, files, rows = 0, 0, 0
    t0 = time.perf_counter()
    while written < target:
        n = per_file
        lengths = rng.integers(50, 151, n)
        total = int(lengths.sum())
        start = int(rng.integers(0, len(pool) - total))
        flat = pool[start : start + total].reshape(-1)  # a view: no copy
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), D)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = [f"u{rows + i:08d}" for i in range(n)]
        split = np.array(["train"] * n, object)
        split[:3] = "validation"
        split[3:6] = "test"
        data = {
            "id": pa.array(ids, pa.string()),
            "num_frames": pa.array(lengths.astype(np.int32)),
            "duration_s": pa.array((lengths / 50).astype(np.float32)),
            "frames": pa.ListArray.from_arrays(pa.array(offsets), inner),
            "emotion": pa.array(np.array(LABELS, object)[rng.integers(0, 4, n)].tolist(), pa.string()),
            "session": pa.array(rng.integers(1, 6, n)),
            "split": pa.array(split.tolist(), pa.string()),
        }
        cols = [data[f.name] if f.name in data else pa.nulls(n, f.type) for f in schema]
        table = pa.Table.from_arrays(
            [c.cast(f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
        )
        path = out / f"part-{files:05d}.parquet"
        path.write_bytes(encode_parquet(table, "zstd"))
        written += path.stat().st_size
        files += 1
        rows += n
    return {"files": files, "rows": rows, "bytes": written, "seconds": round(time.perf_counter() - t0, 1)}


def row_group_compare(data: str, out: Path) -> dict:
    """One generated file rewritten with the writer's former row groups (1024 rows) and with today's
    (ROW_GROUP_MB): plain-read rate and peak RSS of each, each in its own process."""
    import pyarrow.parquet as pq

    from pipeline.writer import ROW_GROUP_MB

    src = sorted(Path(data).glob("*.parquet"))[0]
    table = pq.read_table(src)
    res = {}
    for name, rows in (("1024_rows", 1024), (f"{ROW_GROUP_MB}_mb", None)):
        d = out / f"rg-{name}"
        d.mkdir(parents=True, exist_ok=True)
        if rows is None:
            shutil.copy(src, d / src.name)
        else:
            pq.write_table(table, d / src.name, compression="zstd", row_group_size=rows)
        meta = pq.ParquetFile(d / src.name).metadata
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "plain",
            "--dir",
            str(d),
            "--data",
            str(d),
            "--threads",
            "2",
        ]
        p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["row_groups"] = meta.num_row_groups
        r["rows_per_group"] = meta.row_group(0).num_rows
        r["mb_per_group"] = round(meta.row_group(0).total_byte_size / 2**20, 1)
        res[name] = r
    return res


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_read(data: str, threads: int, limit_s: float = 0.0) -> dict:
    """Every row group's frames column decoded to numpy, `threads` row groups at a time: the limit."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from pipeline.downstream.train import frames_to_numpy

    files = sorted(Path(data).glob("*.parquet"))
    work = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]

    def read(item):
        f, g = item
        values, lengths = frames_to_numpy(pq.ParquetFile(f).read_row_group(g, columns=["frames"]).column(0))
        return len(lengths), values.nbytes

    t0 = time.perf_counter()
    rows = nbytes = 0
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(read, w) for w in work[:threads]]
        nxt = threads
        while futures:
            n, b = futures.pop(0).result()
            rows += n
            nbytes += b
            if limit_s and time.perf_counter() - t0 > limit_s:
                break
            if nxt < len(work):
                futures.append(pool.submit(read, work[nxt]))
                nxt += 1
        for f in futures:
            f.cancel()
    s = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(s, 1), "rows_per_s": round(rows / s, 1),
            "mb_per_s": round(nbytes / s / 2**20, 1), "peak_rss_mb": round(_peak_rss_mb())}  # fmt: skip


def reader_only(data: str, buffer_mb: float, batch_size: int) -> dict:
    """The streaming reader's padded batches for one shuffled epoch, no model."""
    import torch

    from pipeline.downstream.reader import stream_batches, train_plan
    from pipeline.downstream.stream_train import build_catalog
    from pipeline.downstream.train import TrainConfig
    from pipeline.storage import Storage

    cfg = TrainConfig(features=data, label_column="emotion", split_column="split", output="unused",
                      labels=LABELS, shuffle_buffer_mb=buffer_mb)  # fmt: skip
    cat = build_catalog(cfg, Storage())
    torch.manual_seed(0)
    rows = np.flatnonzero(cat.splits == "train")
    plan = train_plan(cat, rows, batch_size, int(buffer_mb * 2**20))
    t0 = time.perf_counter()
    n = 0
    for _, _, y in stream_batches(cat, plan):
        n += len(y)
    s = time.perf_counter() - t0
    return {
        "rows": n,
        "seconds": round(s, 1),
        "rows_per_s": round(n / s, 1),
        "peak_rss_mb": round(_peak_rss_mb()),
    }


def reader_compare(data: str, buffer_mb: float, batch_size: int) -> dict:
    """The two candidate readers, each making shuffled padded batches of the same files with no model:
    pyarrow row groups in our prefetching reader (reader.py), and Ray Data (read_parquet ->
    iter_batches with a local shuffle buffer -> pad_frames) on a local 2-CPU Ray."""
    import ray
    import torch

    from pipeline.downstream.reader import pad_frames, stream_batches, train_plan
    from pipeline.downstream.stream_train import build_catalog
    from pipeline.downstream.train import TrainConfig
    from pipeline.storage import Storage

    res = {}
    cfg = TrainConfig(features=data, label_column="emotion", split_column="split", output="unused",
                      labels=LABELS, shuffle_buffer_mb=buffer_mb)  # fmt: skip
    t0 = time.perf_counter()
    cat = build_catalog(cfg, Storage())
    torch.manual_seed(0)
    plan = train_plan(cat, np.arange(len(cat)), batch_size, int(buffer_mb * 2**20))
    n = sum(len(y) for _, _, y in stream_batches(cat, plan))
    s = time.perf_counter() - t0
    res["pyarrow"] = {"rows": n, "seconds": round(s, 1), "rows_per_s": round(n / s, 1)}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(data, file_extensions=["parquet"], columns=["id", "emotion", "frames"])
        rows_buffer = int(buffer_mb * 2**20 / (100 * D * 2))
        n = 0
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                     local_shuffle_buffer_size=rows_buffer, local_shuffle_seed=0):  # fmt: skip
            x, _ = pad_frames(batch["frames"])
            n += len(x)
        s = time.perf_counter() - t0
        res["ray_data"] = {"rows": n, "seconds": round(s, 1), "rows_per_s": round(n / s, 1),
                           "peak_rss_mb_driver": round(_peak_rss_mb())}  # fmt: skip
    finally:
        ray.shutdown()
    return res


def train_limited(data: str, buffer_mb: float, batch_size: int, device: str, limit_s: float) -> dict:
    """The streaming trainer's epoch loop (the same catalog, plan, reader, model and optimizer as
    stream_train.py) over the train split, stopped after `limit_s` seconds: for boxes where a whole
    epoch of a 10 GB output takes longer than one can wait. The plan still covers the whole epoch."""
    import torch

    from pipeline.downstream.reader import stream_batches, train_plan
    from pipeline.downstream.stream_train import build_catalog
    from pipeline.downstream.train import TrainConfig, frame_model, make_optimizer
    from pipeline.storage import Storage

    cfg = TrainConfig(features=data, label_column="emotion", split_column="split", output="unused",
                      labels=LABELS, shuffle_buffer_mb=buffer_mb, batch_size=batch_size)  # fmt: skip
    t_cat = time.perf_counter()
    cat = build_catalog(cfg, Storage())
    t_cat = time.perf_counter() - t_cat
    torch.manual_seed(0)
    dev = torch.device(device)
    model = frame_model(cat.dim, len(LABELS), cfg.hidden_dim).to(dev)
    opt, _ = make_optimizer(cfg, model)
    loss_fn = torch.nn.CrossEntropyLoss()
    rows = np.flatnonzero(cat.splits == "train")
    plan = train_plan(cat, rows, batch_size, int(buffer_mb * 2**20))
    stats: dict = {}
    n = 0
    t0 = time.perf_counter()
    for x, mask, y in stream_batches(cat, plan, stats=stats):
        opt.zero_grad()
        loss = loss_fn(model(x.to(dev), mask.to(dev)), y.to(dev))
        loss.backward()
        opt.step()
        n += len(y)
        if limit_s and time.perf_counter() - t0 > limit_s:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    return {"rows": n, "epoch_rows": len(rows), "seconds": round(s, 1), "rows_per_s": round(n / s, 1),
            "wait_s": round(stats.get("wait_s", 0.0), 1), "peak_held_mb": round(stats.get("peak_held_bytes", 0) / 2**20),
            "catalog_s": round(t_cat, 1), "peak_rss_mb": round(_peak_rss_mb())}  # fmt: skip


def train_epoch(data: str, buffer_mb: float, batch_size: int, out: str, device: str) -> dict:
    """One epoch of the frame recipe through the real trainer (split column: train / validation / test)."""
    from pipeline.downstream.train import TrainConfig, train

    cfg = TrainConfig(features=data, label_column="emotion", split_column="split", output=out, labels=LABELS,
                      epochs=1, shuffle_buffer_mb=buffer_mb, batch_size=batch_size, checkpoint_every=0,
                      device=device)  # fmt: skip
    t0 = time.perf_counter()
    m = train(cfg, log_fn=lambda s: print(s, file=sys.stderr))
    r = m["reader"]
    return {"rows": r["train_rows"], "train_s": r["train_s"], "rows_per_s": round(r["train_rows"] / r["train_s"], 1),
            "wait_s": r["wait_s"], "peak_held_mb": r["peak_held_mb"], "total_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(_peak_rss_mb())}  # fmt: skip


def _child(what: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--dir", args.dir, "--buffer-mb", str(args.buffer_mb),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device,
           "--limit-s", str(args.limit_s)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/e2v-bench-frames")
    p.add_argument("--gb", type=float, default=10.0)
    p.add_argument("--buffer-mb", type=float, default=512.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="plain read: row groups decoded at a time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", action="store_true", help="keep the generated output")
    p.add_argument("--limit-s", type=float, default=0.0, help="stop the plain read and the epoch after this")
    p.add_argument("--skip", default="", help="comma list of parts to skip: rg,reader,train")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or str(Path(args.dir) / "data")
    if args.child == "compare":
        print(json.dumps(reader_compare(data, args.buffer_mb, args.batch_size)))
        return
    if args.child == "plain":
        print(json.dumps(plain_read(data, args.threads, args.limit_s)))
        return
    if args.child == "train" and args.limit_s:
        print(json.dumps(train_limited(data, args.buffer_mb, args.batch_size, args.device, args.limit_s)))
        return
    if args.child == "reader":
        print(json.dumps(reader_only(data, args.buffer_mb, args.batch_size)))
        return
    if args.child == "train":
        print(
            json.dumps(
                train_epoch(data, args.buffer_mb, args.batch_size, str(Path(args.dir) / "probe"), args.device)
            )
        )
        return
    results: dict = {"cpu": _cpu(), "args": vars(args), "load_average_start": os.getloadavg()}
    try:
        if not Path(data).exists():
            results["generate"] = generate(Path(data), args.gb)
            print("generated", results["generate"], file=sys.stderr, flush=True)
        results["data_gb"] = round(sum(f.stat().st_size for f in Path(data).glob("*.parquet")) / 1e9, 2)
        if "rg" not in args.skip:
            results["row_groups"] = row_group_compare(data, Path(args.dir))
            print("row groups", results["row_groups"], file=sys.stderr, flush=True)
        results["plain_read"] = _child("plain", args)
        print("plain read", results["plain_read"], file=sys.stderr, flush=True)
        if "reader" not in args.skip:
            results["reader_only"] = _child("reader", args)
            print("reader only", results["reader_only"], file=sys.stderr, flush=True)
        if "train" not in args.skip:
            results["train"] = _child("train", args)
            print("train", results["train"], file=sys.stderr, flush=True)
            results["train_vs_plain"] = round(
                results["train"]["rows_per_s"] / results["plain_read"]["rows_per_s"], 3
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(results, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    main()
