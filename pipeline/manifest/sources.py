"""Where rows come from: `input.manifest` -> the sources to read, in a stable order (on the driver).

`input.manifest` may be a manifest file, a glob or a directory of manifest files (all of one format,
read as one manifest), a Kaldi data directory (it holds `wav.scp`), a Hugging Face `save_to_disk`
folder (its `state.json` lists its `.arrow` files; a DatasetDict's, every split), or a glob, a directory or one file
of audio (every file is a row, see `audio_ids`). Each source gets a stable short key: its units are named after it.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import zlib
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa

from ..config import InputConfig
from ..storage import Storage, StorageUnavailable, join
from .columns import file_name
from .errors import ManifestError
from .formats import arrow, detect_format, family, named_format, rttm

AUDIO_SUFFIXES = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .m4a .mp4 .aac .webm .mkv .mka .wma .amr .flv .mov .avi "
    ".3gp .aif .aiff .au .caf .ac3 .mpga .spx .w64 .wv .mp2 .mpa .tta .aifc .eac3 .m4b .ogx .ra .voc .sph "
    ".ogv .m4v .mpg .mpeg .mts .m2ts .wmv .gsm .dts".split()
)
GLOB_CHARS = "*?["
HEAD_BYTES = 1 << 16  # what is read of a JSON-lines manifest to tell a NeMo diarisation manifest


@dataclass(frozen=True)
class Source:
    """One thing a read task reads: a manifest file, a Kaldi data dir, or a listing of audio files."""

    uri: str
    format: str  # an input.format value: jsonl json csv tsv parquet arrow scp lhotse kaldi audio
    key: str  # stable short name: units are named after it (units.unit_name)
    root: str  # relative audio paths resolve against this
    audio: pa.Table | None = None  # format "audio": the listed files (id, path)
    name: str = ""  # the file in default row ids (`<name>:<row>`); "": its file name (`row_name`)
    split: str | None = None  # format "arrow": the DatasetDict split the file belongs to (a `split` column)


def discover(cfg: InputConfig, storage: Storage) -> list[Source]:
    """`input.manifest` -> the sources to read, in a stable order. Raises ManifestError."""
    where = cfg.manifest.rstrip("/") if not cfg.manifest.endswith("://") else cfg.manifest
    try:
        files = storage.glob(where) if any(c in where for c in GLOB_CHARS) else None
        if files == [] and storage.exists(where):
            files = None  # no glob meant: a name that holds `[`, `*` or `?` (a folder `Session [1]`)
        if files is not None:
            base = _glob_base(where)
            if not files:
                raise ManifestError(f"input.manifest: no files match {where}")
        elif storage.is_dir(where):
            if storage.exists(join(where, "wav.scp")) and (
                cfg.format == "kaldi" or (cfg.format == "auto" and not storage.list_files(where, ".rttm"))
            ):
                return [Source(where, "kaldi", source_key("kaldi"), cfg.audio_root or where)]
            if cfg.format in ("auto", "arrow") and (saved := arrow.saved_dataset(where, storage)):
                # a DatasetDict's splits each hold `data-00000-of-0000N.arrow`: row_names keeps their ids apart
                names = row_names([f for f, _ in saved], where)
                return [
                    Source(
                        f,
                        "arrow",
                        source_key(relative(f, where)),
                        cfg.audio_root or parent(f),
                        name=names[f],
                        split=s,
                    )
                    for f, s in saved
                ]
            files, base = storage.list_files(where), where
            if not files:
                raise ManifestError(f"input.manifest: {where} is an empty directory")
        elif not storage.exists(where):
            raise ManifestError(f"input.manifest: no such file: {where}")
        else:
            files, base = [where], parent(where)
    except StorageUnavailable:
        raise  # a store down through every retry is a failed run (rerun), not a bad manifest
    except OSError as e:
        raise ManifestError(f"input.manifest: cannot read {where}: {e}") from None
    return _classify(files, base, cfg, storage)


def _classify(files: list[str], base: str, cfg: InputConfig, storage: Storage) -> list[Source]:
    audio = [f for f in files if _suffix(f) in AUDIO_SUFFIXES]
    manifests = [f for f in files if f not in set(audio)]
    if audio and cfg.format == "auto":
        # corpora ship text beside their audio (LibriSpeech's `<spk>-<chapter>.trans.txt`, README,
        # LICENSE): only a name a manifest format reads makes a file a manifest there; the rest are skipped
        manifests = [f for f in manifests if named_format(f)]
    if cfg.format == "audio" or (audio and not manifests and cfg.format == "auto"):
        return [_audio_source(audio or files, base, cfg)]
    if audio and manifests and len(files) > 1:
        # the glob suggested is one that reads the manifests found (`*.rttm` beside the calls, as
        # pyannote writes them), not one of a format the folder does not hold
        name = _name(manifests[0]).lower()
        suffix = _suffix(name[: -len(".gz")]) + ".gz" if name.endswith(".gz") else _suffix(name)
        glob = f"{base}/*{suffix}" if suffix else f"{base}/{_name(manifests[0])}"
        raise ManifestError(
            f"input.manifest: {base} mixes manifests ({_name(manifests[0])}) and audio files "
            f"({_name(audio[0])}); point input.manifest at one kind (a glob such as {glob})"
        )
    formats = {f: cfg.format if cfg.format != "auto" else detect_format(f) for f in manifests}
    if cfg.format == "auto":
        formats = _diarisation(formats, storage)
    # files a format reads beside its manifests (wav.scp beside RTTM files) are not sources
    companions = {c for fmt in set(formats.values()) for c in family(fmt).companions}
    kept = {f: fmt for f, fmt in formats.items() if _name(f) not in companions}
    names = row_names(list(kept), base)
    sources = [
        Source(f, fmt, source_key(relative(f, base)), cfg.audio_root or parent(f), name=names[f])
        for f, fmt in kept.items()
    ]
    formats = {s.format for s in sources}
    if len(formats) > 1:
        raise ManifestError(
            f"input.manifest: {base} holds manifests of several formats ({', '.join(sorted(formats))}); "
            f"all manifest files must share one format"
        )
    return sources


def _diarisation(formats: dict[str, str], storage: Storage) -> dict[str, str]:
    """JSON-lines manifests found by name whose first line names an RTTM (`rttm_filepath`) are NeMo
    diarisation manifests: read as turns (format `rttm`), not as one clip per line. The first
    manifest's first 64 KiB decide for all (they share one format; lines.count refuses a later
    file that disagrees)."""
    lines = [f for f, fmt in formats.items() if fmt in ("json", "jsonl")]
    if not lines:
        return formats
    try:
        head = storage.read_bytes(lines[0], 0, HEAD_BYTES)
    except StorageUnavailable:
        raise  # a store down through every retry is a failed run (rerun), not a bad manifest
    except OSError as e:
        raise ManifestError(f"input.manifest: cannot read {lines[0]}: {e}") from None
    if head[:2] == b"\x1f\x8b":  # gzip: what of the head decompresses
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
    if not rttm.is_diarisation_manifest(head):
        return formats
    return {f: "rttm" if f in lines else fmt for f, fmt in formats.items()}


def _audio_source(files: list[str], base: str, cfg: InputConfig) -> Source:
    if len(files) == 1 and not _is_under(files[0], base):
        base = parent(files[0])
    # a presigned URL's query (its signature, a credential) is not part of the file's name, nor its id
    names = [relative(parent(f) + "/" + file_name(f), base) if "?" in f else relative(f, base) for f in files]
    # an http(s) listing's URLs are percent-encoded (`spk%201/b.wav`): the id is the file's own path
    web = base.lower().startswith(("http://", "https://"))
    ids = audio_ids([unquote(n) if web else n for n in names])
    table = pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(files, pa.string())})
    return Source(base, "audio", "audio", cfg.audio_root or base, table)


def row_names(files: list[str], base: str) -> dict[str, str]:
    """File -> its name in default row ids (`<name>:<row>`): its file name, except where files in
    different folders share one (a Hugging Face dataset's `data/<config>/train-00000-of-00001.parquet`):
    those are named by their path under `base`, so that their rows' ids differ. Where names do not
    repeat the ids are what they always were, and outputs written before resume under them."""
    counts: dict[str, int] = {}
    for f in files:
        counts[file_name(f)] = counts.get(file_name(f), 0) + 1
    # a URL's query (a presigned signature) is no part of the name, as in file_name
    return {
        f: file_name(f) if counts[file_name(f)] == 1 else relative(parent(f) + "/" + file_name(f), base)
        for f in files
    }


def audio_ids(names: list[str]) -> list[str]:
    """Ids of listed audio files: the relative path without its extension, except where two files
    share that stem (`take1.wav`, `take1.flac`): those keep their extension, so ids stay unique (and
    the rule is the same on every rerun of the same listing)."""
    stems = [posixpath.splitext(n)[0] for n in names]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [n if seen[s] > 1 else s for n, s in zip(names, stems, strict=True)]


# -- names -------------------------------------------------------------------------------------------


def source_key(relative: str) -> str:
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()[:10]


def _suffix(uri: str) -> str:
    name = file_name(uri).lower()
    return name[name.rfind(".") :] if "." in name else ""


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    if "://" in uri:
        if uri.lower().startswith(("http://", "https://")):
            # an http(s) URL's query may hold `/` unencoded (a signature's credential scope): not a folder
            uri = uri.split("#", 1)[0].split("?", 1)[0]
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(os.path.expanduser(uri)))


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    head = pattern[: min(pattern.find(c) for c in GLOB_CHARS if c in pattern)]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def relative(uri: str, base: str) -> str:
    b = base.rstrip("/") + "/"
    if "://" not in uri and "://" not in base:
        return os.path.relpath(os.path.abspath(uri), os.path.abspath(base))
    return uri[len(b) :] if uri.startswith(b) else uri.rsplit("/", 1)[-1]


def _is_under(uri: str, base: str) -> bool:
    return relative(uri, base) != uri.rsplit("/", 1)[-1] or parent(uri) == base
