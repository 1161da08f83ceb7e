"""An interpreter that has only the GPU image's packages, to try the GPU bundle on a CPU box.

    .venv/bin/python bench/gpu_bare.py /tmp/bare        # -> /tmp/bare/bin/python
    GPU_BUNDLE_PY=3.11 bash bench/gpu_bundle.sh /tmp/b311   # a bundle for this box's Python
    PY=/tmp/bare/bin/python GPU_BUNDLE=/tmp/b311 GPU_SITE=/tmp/site311 GPU_CHECK_DRY=1 bash bench/gpu_check.sh

Makes a virtual environment (no system site-packages) whose only packages are the ones bench/gpu_image.txt
lists, with whatever they require, linked from the running interpreter's environment (torch, numpy,
pyarrow, pytest...): no Ray, soundfile, soxr, pydantic or PyAV, as on a bare GPU node. What it cannot
show: the node's Python 3.12 and the bundle's cp312 wheels (this box's Python is another version).
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_closure() -> dict[str, metadata.Distribution]:
    """The image's distributions installed here, with everything they require (extras left out)."""
    text = (HERE / "gpu_image.txt").read_text()
    todo = [norm(n) for line in text.splitlines() if not line.startswith("#") for n in line.split()]
    installed = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: dict[str, metadata.Distribution] = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen[name] = installed[name]
        for req in installed[name].requires or []:
            if "extra ==" in req:
                continue
            if ";" in req and "sys_platform" in req and "linux" not in req:
                continue
            todo.append(norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def main():
    dest = Path(sys.argv[1]).resolve()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(dest)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    image = dest / "image"
    image.mkdir()
    tops = set()
    for dist in image_closure().values():
        for f in dist.files or []:
            if f.parts and f.parts[0] not in ("..", "bin", "__pycache__"):
                tops.add(Path(dist.locate_file(f.parts[0])))
    for top in sorted(tops):
        if top.exists():
            (image / top.name).symlink_to(top)
    (site / "gpu_image.pth").write_text(f"{image}\n")
    print(f"{dest}/bin/python: {len(tops)} entries of the image's packages linked from {sys.prefix}")


if __name__ == "__main__":
    main()
