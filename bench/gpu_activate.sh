# Source on a bare GPU node to run this checkout with the bundle bench/gpu_bundle.sh made:
#   source bench/gpu_activate.sh [BUNDLE]      # or: source .gpu-bundle/activate.sh (a copy of this file)
# Unpacks the bundle's Ray and wheels into $GPU_SITE (default /tmp/e2v-site; kept while the bundle is the
# same), puts it and the checkout on PYTHONPATH, and sets BUNDLE, PY (the interpreter: $PY or python3) and
# PYTHONUNBUFFERED. The checkout is the one this file's folder lies in (bench/ or .gpu-bundle/), so what
# runs is the working tree as it is, uncommitted changes included. PyAV's stand-in goes on the path only
# while pipeline.audio cannot be imported without PyAV. Returns non-zero when something does not import.
_e2v_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2V_ROOT=$(cd "$_e2v_here/.." && pwd)
BUNDLE=$(cd "${1:-${GPU_BUNDLE:-$E2V_ROOT/.gpu-bundle}}" && pwd) || return 1
PY=${PY:-python3}
GPU_SITE=${GPU_SITE:-/tmp/e2v-site}
if [ "$(cat "$GPU_SITE/.bundle-id" 2>/dev/null)" != "$(cat "$BUNDLE/id")" ]; then
  rm -rf "$GPU_SITE" && mkdir -p "$GPU_SITE" &&
    if command -v xz >/dev/null; then tar -C "$GPU_SITE" -xJf "$BUNDLE/ray-site.tar.xz"
    else "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BUNDLE/ray-site.tar.xz" "$GPU_SITE"
    fi &&
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$GPU_SITE" "$BUNDLE"/whl/*.whl &&
    cp "$BUNDLE/id" "$GPU_SITE/.bundle-id" || { echo "gpu_activate: unpacking $BUNDLE failed" >&2; return 1; }
fi
export PYTHONPATH="$GPU_SITE:$E2V_ROOT" PYTHONUNBUFFERED=1 BUNDLE PY GPU_SITE E2V_ROOT
if ! "$PY" -c "import av" 2>/dev/null && ! "$PY" -c "import pipeline.audio" 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$BUNDLE/stand-ins"
  echo "gpu_activate: pipeline.audio needs PyAV at import; using the bundle's stand-in (no containers)"
fi
(cd "$E2V_ROOT" && "$PY" -c "
import os, ray, torch, pydantic, soundfile, soxr, pipeline.audio, pipeline.config
try:
    import av
    av = 'stand-in (no containers)' if 'stand-ins' in av.__file__ else 'installed'
except ImportError:
    av = 'absent (containers become error rows)'
print('gpu_activate: ray', ray.__version__, 'from', os.path.dirname(ray.__file__), '| torch', torch.__version__,
      '| cuda', torch.cuda.is_available(), '| pydantic', pydantic.__version__, '| PyAV', av)
") || { echo "gpu_activate: the project does not import with the bundle" >&2; return 1; }
unset _e2v_here
