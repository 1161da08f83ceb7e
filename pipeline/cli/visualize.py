"""Embedding map (UMAP) and label charts of the extraction output, as PNG files.

    e2v-visualize --features outputs/iemocap --output outputs/iemocap-viz \
        [--color-by label] [--gold emotion] [--max-points 50000] [--seed 42]

    e2v-visualize --features outputs/calls --timeline call-0042 --output outputs/calls-viz

Writes umap_<column>.png (and umap_<gold>.png), label_counts.png and, with --gold,
gold_vs_predicted.png. With --timeline, writes only timeline-<recording_id>.png: the class scores of
that recording's speech segments over time (needs an output of a job run with
audio.segmentation: vad). Exit codes: 0 done, 2 bad input.
"""

import argparse
import sys

from ..downstream.timeline import write_timeline
from ..downstream.viz import visualize
from ..storage import Storage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="extraction output directory or s3:// prefix")
    p.add_argument("--output", required=True, help="directory for the PNG files")
    p.add_argument("--color-by", default=None, help="column that colours the map (default: label)")
    p.add_argument("--gold", default=None, help="gold label column, e.g. emotion")
    p.add_argument("--max-points", type=int, default=50_000, help="random sample above this many rows")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--timeline",
        metavar="RECORDING_ID",
        default=None,
        help="draw this recording's emotion timeline instead",
    )
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// features")
    args = p.parse_args(argv)
    try:
        storage = Storage(endpoint_url=args.endpoint_url)
        if args.timeline is not None:
            paths = [write_timeline(args.features, args.timeline, args.output, storage)]
        else:
            paths = visualize(
                args.features,
                args.output,
                color_by=args.color_by,
                gold=args.gold,
                storage=storage,
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
