"""Manifests for public emotion corpora, ready for `e2v-extract` and `e2v-train`.

IEMOCAP (docs/model.md, "The IEMOCAP recipe"): from the release directory, `Session{N}/dialog/EmoEvaluation/*.txt` lines
`[start - end]<TAB>UTT_ID<TAB>LABEL<TAB>[V, A, D]`; keep ang/exc/hap/neu/sad with exc renamed hap (the
standard 4-class set: 5,531 utterances, per session 1085/1023/1151/1031/1241). Rows come in the recipe's
order: sessions 1..5, per session the evaluation files in sorted (shell glob, C locale) order, lines in
file order. Columns: id, path (`Session{N}/sentences/wav/<dialog>/<utt>.wav`, absolute), emotion,
session (int), speaker (e.g. Ses01F: session prefix + the gender letter of the utterance's last field).

EmoBox (github.com/emo-box/EmoBox `data/<dataset>/`): jsonl records with `key`, `wav`, `emo` (plus
`length`, `channel`, `sample_rate`, ...) in `fold_<k>/` test files (`<dataset>_test_fold_<k>.jsonl` or
`test.jsonl`). Each utterance gets `fold` = the k whose test file lists it; `emotion` = `emo`, mapped
through the dataset's `label_map.json` when one is there (unless raw labels are asked for). A dataset
with one fold (MELD, MSP-Podcast, CREMA-D, ...) has its whole corpus in that fold's train / valid /
test files: every row is kept, with `split` = train / validation / test.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..storage import join

log = logging.getLogger(__name__)

IEMOCAP_LABELS = {"ang": "ang", "exc": "hap", "hap": "hap", "neu": "neu", "sad": "sad"}
IEMOCAP_SESSION_SIZES = (1085, 1023, 1151, 1031, 1241)  # the standard 4-class set, for reference


class DatasetError(ValueError):
    pass


# -- IEMOCAP --------------------------------------------------------------------------------------


def parse_emo_evaluation(text: str) -> list[tuple[str, str]]:
    """EmoEvaluation file text -> [(utterance id, label)] for its `[start - end]  ID  LABEL  [V, A, D]`
    lines, in file order (the per-annotator `C-E1:` lines and headers are ignored)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("["):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3 or not fields[1].startswith("Ses"):
            continue
        out.append((fields[1].strip(), fields[2].strip()))
    return out


def iemocap_speaker(utt_id: str) -> str:
    """Ses01F_impro01_M003 -> Ses01M (the speaker is the gender letter of the last field)."""
    return utt_id[:5] + utt_id.rsplit("_", 1)[-1][0]


def iemocap_rows(
    root: str | Path,
    sessions: tuple[int, ...] = (1, 2, 3, 4, 5),
    label_map: dict[str, str] | None = None,
    keep_missing: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """-> (rows, stats). Rows whose wav is missing are dropped (counted in stats['missing_audio'])
    unless `keep_missing` (the job then writes them as error rows)."""
    root = Path(root).expanduser().resolve()
    label_map = IEMOCAP_LABELS if label_map is None else label_map
    rows: list[dict[str, Any]] = []
    stats: Counter[str] = Counter()
    for s in sessions:
        eval_dir = root / f"Session{s}" / "dialog" / "EmoEvaluation"
        files = sorted(eval_dir.glob("*.txt"))  # sorted: the shell glob's order (LC_ALL=C)
        if not files:
            raise DatasetError(f"no EmoEvaluation/*.txt under {eval_dir}")
        for f in files:
            for utt, raw in parse_emo_evaluation(f.read_text(encoding="utf-8", errors="replace")):
                stats["labelled"] += 1
                label = label_map.get(raw)
                if label is None:
                    stats[f"dropped_{raw}"] += 1
                    continue
                dialog = utt.rsplit("_", 1)[0]
                wav = root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav"
                if not wav.is_file():
                    stats["missing_audio"] += 1
                    if not keep_missing:
                        continue
                rows.append(
                    {
                        "id": utt,
                        "path": str(wav),
                        "emotion": label,
                        "session": s,
                        "speaker": iemocap_speaker(utt),
                    }
                )
    ids = Counter(r["id"] for r in rows)
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise DatasetError(f"utterance ids repeat across EmoEvaluation files, e.g. {dup[0]}")
    return rows, dict(stats)


# -- EmoBox ---------------------------------------------------------------------------------------

_FOLD_DIR = re.compile(r"^fold_?(\d+)$")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{i}: not JSON: {e}") from None
    return out


def _fold_file(fd: Path, k: int, role: str) -> Path | None:
    """The fold's `role` file (test, train, valid): `<role>.jsonl` or `<dataset>_<role>_fold_<k>.jsonl`, the
    names the benchmark reads. Other jsonl beside them are not it: emodb's folds keep older copies
    (`emodb_test_fold1.jsonl`, with `audio` / `label` keys), mer2023's fold_1 its `test1` .. `test3` sets."""
    found = sorted(
        p
        for p in fd.glob("*.jsonl")
        if p.name == f"{role}.jsonl" or p.name.endswith(f"_{role}_fold_{k}.jsonl")
    )
    if len(found) > 1:
        raise DatasetError(f"{fd}: more than one {role} jsonl: {[p.name for p in found]}")
    return found[0] if found else None


def emobox_rows(
    dataset_dir: str | Path, audio_root: str | None = None, raw_labels: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """EmoBox `data/<dataset>/` -> (rows id, path, emotion, fold (and split, one fold), stats). Paths
    relative in the jsonl are joined to `audio_root` when given (else left relative: set
    `input.audio_root` in the job)."""
    d = Path(dataset_dir).expanduser()
    fold_dirs = sorted(
        ((int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))),
        key=lambda t: t[0],
    )
    if not fold_dirs:
        raise DatasetError(f"no fold_<k>/ directories in {d}")
    label_map: dict[str, str] = {}
    if not raw_labels and (d / "label_map.json").is_file():
        label_map = json.loads((d / "label_map.json").read_text(encoding="utf-8"))
    # one fold: its test set alone is a fraction of the corpus with one fold value, which leave-one-
    # group-out cannot use; the benchmark trains on the fold's train file, so keep all three as `split`
    roles = [("test", "test")]
    if len(fold_dirs) == 1:
        roles = [("train", "train"), ("valid", "validation"), ("test", "test")]
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    stats: Counter[str] = Counter()
    for k, fd in fold_dirs:
        for role, split in roles:
            path = _fold_file(fd, k, role)
            if path is None:
                if role == "valid":  # most single-fold datasets have none (e2v-train then draws one)
                    continue
                raise DatasetError(
                    f"{fd}: no {role} jsonl ({role}.jsonl or *_{role}_fold_{k}.jsonl) among "
                    f"{sorted(p.name for p in fd.glob('*.jsonl'))}"
                )
            for rec in _read_jsonl(path):
                missing = [key for key in ("key", "wav", "emo") if key not in rec]
                if missing:
                    raise DatasetError(f"{path}: record without {missing[0]!r}: {rec}")
                key = str(rec["key"])
                where = f"fold {k}" if len(roles) == 1 else split
                if key in seen:
                    raise DatasetError(
                        f"{key} is in the test sets of {seen[key]} and {where}"
                        if len(roles) == 1
                        else f"{key} is in the {seen[key]} and {where} sets"
                    )
                seen[key] = where
                emo = str(rec["emo"])
                wav = str(rec["wav"])
                if audio_root:
                    wav = join(audio_root, wav)
                row = {"id": key, "path": wav, "emotion": label_map.get(emo, emo), "fold": k}
                if len(roles) > 1:
                    row["split"] = split
                rows.append(row)
                stats[f"fold_{k}" if len(roles) == 1 else split] += 1
    return rows, dict(stats)


# -- writing --------------------------------------------------------------------------------------


def write_manifest(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Rows -> .jsonl, .csv or .parquet by the file suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix in (".csv", ".parquet"):
        table = pa.Table.from_pylist(rows)
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, path)
    else:
        raise DatasetError(f"{path}: manifest must end in .jsonl, .csv or .parquet")
    return path


def counts_table(rows: list[dict[str, Any]], group: str, label: str = "emotion") -> str:
    """Text table: one line per group value with label counts and the total."""
    labels = sorted({r[label] for r in rows})
    groups = sorted({r[group] for r in rows}, key=lambda g: (str(type(g)), g))
    c = Counter((r[group], r[label]) for r in rows)
    width = max([len(str(group))] + [len(str(g)) for g in groups])
    lines = [f"{group:<{width}}  " + "  ".join(f"{lab:>6}" for lab in labels) + "   total"]
    for g in groups:
        lines.append(
            f"{g!s:<{width}}  "
            + "  ".join(f"{c[(g, lab)]:>6}" for lab in labels)
            + f"  {sum(c[(g, lab)] for lab in labels):>6}"
        )
    lines.append(
        f"{'all':<{width}}  "
        + "  ".join(f"{sum(c[(g, lab)] for g in groups):>6}" for lab in labels)
        + f"  {len(rows):>6}"
    )
    return "\n".join(lines)
