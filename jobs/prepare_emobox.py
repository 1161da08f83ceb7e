"""`e2v-prepare-emobox` as a script: `python jobs/prepare_emobox.py --help`. For `ray job submit --working-dir .`, which
puts the uploaded folder on PYTHONPATH; elsewhere the package must be installed (`pip install -e .`)."""

import sys

from pipeline.cli.prepare_emobox import main

if __name__ == "__main__":
    sys.exit(main())
