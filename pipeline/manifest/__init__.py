"""Manifests as corpora ship them -> normalised Arrow blocks, grouped into units of work.

    sources.py   where rows come from: a file, a glob or folder of shards, a Kaldi dir, audio files
    formats/     one module per format family (detect + count + read), and their registry
    columns.py   which column holds the id, the audio, the span; the rest passes through
    units.py     how work is cut: units (committed whole), pieces (one read task), blocks
    resume.py    what is done: the record a rerun plans with (built by writer.Output)

See docs/corpora.md for one recipe per corpus layout.
"""

from .columns import ID_ALIASES, PATH_ALIASES, Columns, check_unique_across, normalise
from .errors import ManifestError
from .formats import REGISTRY, Count, Format, count_rows, detect_format
from .resume import Committed, Resume
from .sources import AUDIO_SUFFIXES, Source, discover
from .units import MAX_BLOCK_BYTES, Piece, Plan, block_rows, read_pieces, read_units, unit_name

__all__ = [
    "AUDIO_SUFFIXES",
    "ID_ALIASES",
    "MAX_BLOCK_BYTES",
    "PATH_ALIASES",
    "REGISTRY",
    "Columns",
    "Committed",
    "Count",
    "Format",
    "ManifestError",
    "Piece",
    "Plan",
    "Resume",
    "Source",
    "block_rows",
    "check_unique_across",
    "count_rows",
    "detect_format",
    "discover",
    "normalise",
    "read_pieces",
    "read_units",
    "unit_name",
]
