"""Embedding map (UMAP) and label charts of the extraction output, as PNG files.

    python jobs/visualize.py --features outputs/iemocap --output outputs/iemocap-viz \
        [--color-by label] [--gold emotion] [--max-points 50000] [--seed 42]

Writes umap_<column>.png (and umap_<gold>.png), label_counts.png and, with --gold,
gold_vs_predicted.png. Exit codes: 0 done, 2 bad input.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.downstream.viz import visualize  # noqa: E402
from pipeline.storage import Storage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="extraction output directory or s3:// prefix")
    p.add_argument("--output", required=True, help="directory for the PNG files")
    p.add_argument("--color-by", default=None, help="column that colours the map (default: label)")
    p.add_argument("--gold", default=None, help="gold label column, e.g. emotion")
    p.add_argument("--max-points", type=int, default=50_000, help="random sample above this many rows")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// features")
    args = p.parse_args(argv)
    try:
        paths = visualize(
            args.features,
            args.output,
            color_by=args.color_by,
            gold=args.gold,
            storage=Storage(endpoint_url=args.endpoint_url),
            max_points=args.max_points,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
