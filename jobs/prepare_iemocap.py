"""`e2v-prepare-iemocap` as a script: `python jobs/prepare_iemocap.py --help`. For `ray job submit --working-dir .`, which
puts the uploaded folder on PYTHONPATH; elsewhere the package must be installed (`pip install -e .`)."""

import sys

from pipeline.cli.prepare_iemocap import main

if __name__ == "__main__":
    sys.exit(main())
