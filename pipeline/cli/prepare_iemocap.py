"""Build the standard 4-class IEMOCAP manifest (ang / hap+exc / neu / sad; docs/model.md, "The IEMOCAP recipe").

    e2v-prepare-iemocap --root /data/IEMOCAP_full_release --output data/iemocap/manifest.jsonl
    e2v-extract --config configs/iemocap.yaml
    e2v-train --features outputs/iemocap --label-column emotion \
        --fold-column session --output outputs/iemocap-probe --labels ang,hap,neu,sad

Columns: id, path (absolute), emotion, session (1..5), speaker (Ses01F ...); the output format
follows the suffix (.jsonl, .csv, .parquet). Prints per-session label counts. Exit 2 on a bad root.
"""

import argparse
import sys

from ..downstream.importers import (
    IEMOCAP_SESSION_SIZES,
    DatasetError,
    counts_table,
    iemocap_rows,
    write_manifest,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="IEMOCAP release dir (holds Session1 .. Session5)")
    p.add_argument("--output", required=True, help="manifest file: .jsonl, .csv or .parquet")
    p.add_argument("--sessions", default="1,2,3,4,5", help="comma-separated session numbers")
    p.add_argument("--keep-missing", action="store_true", help="keep rows whose wav is missing")
    args = p.parse_args(argv)
    try:
        sessions = tuple(int(s) for s in args.sessions.split(",") if s.strip())
        rows, stats = iemocap_rows(args.root, sessions, keep_missing=args.keep_missing)
        if not rows:
            raise DatasetError(f"no utterances with labels ang/exc/hap/neu/sad under {args.root}")
        path = write_manifest(rows, args.output)
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(counts_table(rows, "session"))
    sizes = [sum(r["session"] == s for r in rows) for s in sessions]
    if sessions == (1, 2, 3, 4, 5) and tuple(sizes) != IEMOCAP_SESSION_SIZES:
        print(f"note: per-session counts {sizes} differ from the standard {list(IEMOCAP_SESSION_SIZES)}")
    if stats.get("missing_audio"):
        kept = "kept" if args.keep_missing else "dropped"
        print(f"warning: {stats['missing_audio']} utterances have no wav file ({kept})", file=sys.stderr)
    print(f"{len(rows)} utterances -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
