#!/usr/bin/env bash
# Pack what a bare GPU node lacks to run this project, for bench/gpu_check.sh. Such a node (see
# bench/README.md, "GPU check") has python3 3.12 with torch, torchaudio, numpy, pyarrow, pandas, fsspec,
# pyyaml, aiohttp, grpcio and pytest, but no package index, no Ray, soundfile, soxr, pydantic or PyAV,
# no espeak-ng or sox, and takes at most 64 MiB from here (the project's working tree included). Packs:
#   ray-site.tar.xz  Ray 2.60 unpacked and slimmed (Java, RLlib, Serve and LLM parts dropped, binaries
#                    stripped): ~28 MB
#   whl/             the other wheels the image lacks (soundfile, soxr, pydantic and Ray's needs): ~12 MB
#   pieces/          the espeak-ng sentences of pipeline.testing.samples as 16 kHz wav, from which
#                    bench/gpu_corpus.py makes corpora there
#   stand-ins/av     a PyAV that refuses containers (the real wheel is 35 MB), used by gpu_activate.sh
#                    only while pipeline.audio cannot be imported without PyAV
#   activate.sh      a copy of bench/gpu_activate.sh
# The project itself is not packed: it travels as the working tree, and the check runs that checkout.
#   bash bench/gpu_bundle.sh [DEST]          # from anywhere; DEST defaults to <repo>/.gpu-bundle
#   GPU_BUNDLE_PY=3.11 bash bench/gpu_bundle.sh /tmp/b311   # for another Python (to try it on this box)
# Needs: pip with network access, xz, strip, file, espeak-ng and sox (for the pieces), the venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=$(realpath -m "${1:-$ROOT/.gpu-bundle}")
PYVER=${GPU_BUNDLE_PY:-3.12}
PY=${PY:-$ROOT/.venv/bin/python}
PLAT=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The GPU image's packages: their wheels stay behind
IMAGE=$(grep -v "^#" "$ROOT/bench/gpu_image.txt")
# ... and what only Ray's runtime-env installs (virtualenv) or py-spy profiling use
SKIP="ray av virtualenv distlib python-discovery platformdirs py-spy tzdata"

rm -rf "$DEST" && mkdir -p "$DEST/whl" "$DEST/dl" "$DEST/stand-ins/av"
if git -C "$ROOT" rev-parse --show-toplevel >/dev/null 2>&1 && [[ "$DEST" == "$ROOT"/* ]]; then
  rel=${DEST#"$ROOT"}
  grep -qx "$rel/" "$ROOT/.gitignore" || echo "$rel/" >> "$ROOT/.gitignore"
fi
python3 -m pip download -q "${PLAT[@]}" -d "$DEST/dl" "ray[data,default]==2.60.0" soundfile soxr pydantic \
  2>&1 | { grep -v "is ignored" || true; }

# Ray: unpacked, slimmed, one tar.xz (unpacked there in a few seconds; a wheel would need pip to unzip 80 MB)
mkdir -p "$DEST/ray" && python3 - "$DEST"/dl/ray-*.whl "$DEST/ray" <<'PY'
import os, sys, zipfile  # as unzip does: with the files' modes (raylet, gcs_server are executables)
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        if info.external_attr >> 16:
            os.chmod(path, (info.external_attr >> 16) & 0o777)
PY
rm -rf "$DEST"/ray/ray/{jars,rllib,serve,llm}
find "$DEST/ray/ray" -type f \( -name "*.so" -o -perm -u+x \) -print0 |
  while IFS= read -r -d '' f; do
    if file "$f" | grep -q "ELF.*not stripped"; then strip --strip-unneeded "$f"; fi
  done
tar -C "$DEST/ray" -cf - . | xz -T0 -6 > "$DEST/ray-site.tar.xz" && rm -rf "$DEST/ray"

keep=" $(echo $IMAGE $SKIP) "
for f in "$DEST"/dl/*.whl; do
  n=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  [[ "$keep" == *" $n "* ]] || mv "$f" "$DEST/whl/"
done
rm -rf "$DEST/dl"

# speech pieces: bench/common.py's speech_pieces synthesises them into DEST/pieces (espeak-ng + sox)
(cd "$ROOT/bench" && PYTHONPATH="$ROOT" "$PY" -c "import sys; from pathlib import Path; from common import speech_pieces; speech_pieces(Path(sys.argv[1]))" "$DEST")

cat > "$DEST/stand-ins/av/__init__.py" <<'PY'
"""Stand-in for PyAV on a GPU node without it (its wheel is 35 MB): FFmpeg containers are not read there."""


class FFmpegError(Exception):
    pass


class AudioFrame:
    pass


time_base = 1000000


def open(*args, **kwargs):
    raise FFmpegError("PyAV is not installed on this machine")
PY
cp "$ROOT/bench/gpu_activate.sh" "$DEST/activate.sh"
echo "$PYVER $(cd "$DEST" && find ray-site.tar.xz whl -type f -printf '%s %p\n' | sort | md5sum | cut -c1-12)" > "$DEST/id"
echo "bundle $DEST for Python $PYVER: $(du -sh "$DEST" | cut -f1) ($(du -sb "$DEST" | cut -f1) bytes);" \
  "the working tree travels too: $(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) bytes"
