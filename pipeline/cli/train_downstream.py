"""Train and evaluate a downstream emotion classifier on the extraction output (the IEMOCAP recipe of docs/model.md).

    e2v-train --features outputs/iemocap --label-column emotion \
        --fold-column session --output outputs/iemocap-probe \
        --label-map exc=hap --labels ang,hap,neu,sad [--input frames|utterance] [--epochs 100] [--seed 42]
    e2v-train --features s3://bucket/msp --label-column emotion --split-column split --output s3://bucket/msp-probe
    e2v-train --config train.yaml [--epochs 30 ...]   # YAML keys = flag names with _

Leave-one-group-out over --fold-column, or the corpus's train/validation/test split (--split-column);
streams the features in batches with memory bounded by --shuffle-buffer-mb (--reader memory: the
in-memory reference). Writes OUTPUT/metrics.json (per fold / split / group and mean WA / UA / WF1),
OUTPUT/confusion.png and OUTPUT/checkpoints/last.pt (every --checkpoint-every steps; a rerun resumes
from it). Exit codes: 0 done, 2 bad config or unusable features.
"""

import argparse
import logging
import os
import sys

from ..config import ConfigError
from ..downstream.train import load_train_config, train
from . import log_level


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with the same keys (label_column, fold_column, ...); flags win")
    p.add_argument("--features", help="extraction output directory or s3:// prefix")
    p.add_argument("--label-column", help="gold label column, e.g. emotion")
    p.add_argument("--fold-column", help="group column for leave-one-group-out, e.g. session")
    p.add_argument(
        "--split-column", help="train/validation/test column (EmoBox, MSP-Podcast) instead of folds"
    )
    p.add_argument("--output", help="directory or URI for metrics.json, confusion.png and checkpoints/")
    p.add_argument("--input", choices=["auto", "frames", "utterance"], help="default: frames if written")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--lr", type=float, help="RMSprop lr and CyclicLR base_lr (default 5e-4)")
    p.add_argument("--max-lr", type=float, help="CyclicLR max_lr (default 1e-3)")
    p.add_argument("--step-size-up", type=int, help="CyclicLR step_size_up in epochs (default 10)")
    p.add_argument("--momentum", type=float, help="RMSprop momentum (default 0.9)")
    p.add_argument("--hidden-dim", type=int, help="width of the frame model's first layer (default 256)")
    p.add_argument("--val-fraction", type=float, help="share of the non-test rows for validation (0.2)")
    p.add_argument("--order-by", help="row order before the random split (default: id)")
    p.add_argument("--label-map", nargs="+", metavar="RAW=LABEL", help="e.g. exc=hap")
    p.add_argument("--labels", help="comma-separated label set and order, e.g. ang,hap,neu,sad")
    p.add_argument(
        "--reader", choices=["stream", "memory"], help="stream (default) or the in-memory reference"
    )
    p.add_argument(
        "--shuffle-buffer-mb", type=float, help="stream: shuffle buffer (bounds memory), default 1024"
    )
    p.add_argument("--prefetch-batches", type=int, help="stream: batches built ahead of the model")
    p.add_argument("--read-ahead", type=int, help="stream: row groups read in parallel")
    p.add_argument("--checkpoint-every", type=int, help="stream: steps between checkpoints (0: none)")
    p.add_argument("--log-level", type=log_level, default=os.environ.get("E2V_LOG_LEVEL", "WARNING"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "log_level")}
    try:
        cfg = load_train_config(args.config, overrides)
        result = train(cfg, log_fn=lambda s: print(s, file=sys.stderr))
    except (ConfigError, ValueError, OSError) as e:  # OSError: features or output unreadable / not a folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(os.path.join(cfg.output, "metrics.json"))
    m = result["mean"]
    print(f"WA {100 * m['wa']:.2f}  UA {100 * m['ua']:.2f}  WF1 {100 * m['wf1']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
