"""`make demo`: the extraction job end to end on the committed sample corpus, then a DuckDB query.

Uses emotion2vec_plus_base from the Hugging Face hub when it can be reached (or is cached); when it
cannot, builds a randomly initialised model of the same architecture and says loudly that its
labels are meaningless (the pipeline, the output and the query are real either way).
"""

import os
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.model import ModelSourceError, resolve
from pipeline.run import JobError, RunFailed, run

ROOT = Path(__file__).resolve().parent.parent

BANNER = "!" * 100


def pick_model(source: str) -> tuple[str, bool]:
    """-> (model.source to use, is_random)."""
    try:
        resolve(source)
        return source, False
    except ModelSourceError as e:
        print(f"{BANNER}\n! {source} is not available here: {str(e).split(';')[0]}", file=sys.stderr)
    from pipeline.model.config import base
    from pipeline.testing.checkpoints import random_model, write_checkpoint

    out = ROOT / "outputs" / "demo-random-emotion2vec_plus_base"
    if not (out / "model.pt").exists():
        write_checkpoint(random_model(base(num_classes=9), seed=0), out, "hub")
    print(
        "! USING A RANDOMLY INITIALISED MODEL of the emotion2vec+ base architecture instead.\n"
        "! Its labels and scores are MEANINGLESS; the pipeline, output format and query are real.\n"
        "! Pre-download the real model (see README) and set model.source to use it.\n" + BANNER,
        file=sys.stderr,
    )
    return str(out), True


def main() -> int:
    os.chdir(ROOT)
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    source, is_random = pick_model(cfg.model.source)
    cfg.model.source = source
    try:
        result = run(cfg)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # a Ray failure: one line, as e2v-extract prints it, not a traceback
        print(f"error: {e}; committed units are kept: rerun `make demo` to resume", file=sys.stderr)
        return 1

    import duckdb

    out = Path(cfg.output.path).resolve()
    query = f"""
        SELECT label, count(*) AS n, round(avg(duration_s), 2) AS avg_s
        FROM read_parquet('{out}/**/*.parquet') WHERE error IS NULL
        GROUP BY label ORDER BY n DESC, label"""
    print(f"\nOutput: {out}  (Parquet files + {out / '_run.json'})")
    print(f"Query (DuckDB):{query}\n")
    print(duckdb.sql(query))
    rows = result.info["rows"]
    print(f"rows: {rows}; throughput: {result.info['throughput']}")
    if is_random:
        print("(labels above come from a RANDOM model: they only show the pipeline works)")
    return 3 if result.too_many_errors else 0


if __name__ == "__main__":
    sys.exit(main())
