"""Build a manifest from an EmoBox dataset folder (github.com/emo-box/EmoBox `data/<dataset>/`).

    e2v-prepare-emobox --dataset-dir EmoBox/data/iemocap --audio-root /data/emobox \
        --output data/emobox-iemocap.jsonl
    e2v-train --features OUT --label-column emotion --fold-column fold --output DIR

Columns: id (`key`), path (`wav`, joined to --audio-root when relative), emotion (`emo`, through the
dataset's label_map.json unless --raw-labels), fold (the k of the fold_<k> test file that lists the
utterance). A dataset with one fold (MELD, MSP-Podcast, CREMA-D, ...) keeps its train and valid rows too,
with split (train / validation / test): train it with --split-column split. Prints per-fold (per-split)
label counts. Exit 2 on a bad folder.
"""

import argparse
import sys

from ..downstream.importers import DatasetError, counts_table, emobox_rows, write_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", required=True, help="EmoBox data/<dataset> folder with fold_<k>/")
    p.add_argument("--output", required=True, help="manifest file: .jsonl, .csv or .parquet")
    p.add_argument("--audio-root", default=None, help="prefix (dir or s3://) for relative wav paths")
    p.add_argument("--raw-labels", action="store_true", help="keep `emo` as is (no label_map.json)")
    args = p.parse_args(argv)
    try:
        rows, _ = emobox_rows(args.dataset_dir, args.audio_root, args.raw_labels)
        if not rows:
            raise DatasetError(f"no test-fold records under {args.dataset_dir}")
        path = write_manifest(rows, args.output)
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    one_fold = "split" in rows[0]
    print(counts_table(rows, "split" if one_fold else "fold"))
    print(f"{len(rows)} utterances -> {path}")
    if one_fold:
        print("one fold: train with --split-column split (leave-one-group-out needs two folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
