"""Embedding map (UMAP) and label charts of the extraction output, as PNG files.

    e2v-visualize --features outputs/iemocap --output outputs/iemocap-viz \
        [--color-by label] [--gold emotion] [--max-points 50000] [--seed 42]

    e2v-visualize --features outputs/calls --timeline call-0042 --summary --output outputs/calls-viz

Writes umap_<column>.png (and umap_<gold>.png), label_counts.png and, with --gold,
gold_vs_predicted.png. With --timeline and/or --summary, writes only these instead:
--timeline REC: timeline-<REC>.png, the class scores of that recording's turns or speech segments over
time, one lane per speaker when the output has speakers (needs spans: diariser turns, segments, or a
job run with audio.segmentation: vad); --summary: speakers.csv/.parquet (per recording and speaker:
speaking time, share of it per emotion, mean scores, overlap) and changes.csv/.parquet (the turns where
a speaker's top emotion changes). Exit codes: 0 done, 2 bad input.
"""

import argparse
import sys

from ..downstream.summary import write_summary
from ..downstream.timeline import write_timeline
from ..downstream.viz import visualize
from ..storage import Storage
from . import positive_int


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", required=True, help="extraction output directory or s3:// prefix")
    p.add_argument("--output", required=True, help="directory for the PNG files")
    p.add_argument("--color-by", default=None, help="column that colours the map (default: label)")
    p.add_argument("--gold", default=None, help="gold label column, e.g. emotion")
    p.add_argument(
        "--max-points", type=positive_int, default=50_000, help="random sample above this many rows"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--timeline",
        metavar="RECORDING_ID",
        default=None,
        help="draw this recording's emotion timeline (one lane per speaker) instead of the map",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="write the per-recording, per-speaker summary tables instead of the map",
    )
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// features")
    args = p.parse_args(argv)
    try:
        storage = Storage(endpoint_url=args.endpoint_url)
        paths = []
        if args.timeline is not None:
            paths.append(write_timeline(args.features, args.timeline, args.output, storage))
        if args.summary:
            paths += write_summary(args.features, args.output, storage)
        if not paths:
            paths = visualize(
                args.features,
                args.output,
                color_by=args.color_by,
                gold=args.gold,
                storage=storage,
                max_points=args.max_points,
                seed=args.seed,
            )
    except (ValueError, OSError) as e:  # OSError: features or output unreadable / not a folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
