"""`e2v-train` as a script: `python jobs/train_downstream.py --help`. For `ray job submit --working-dir .`, which
puts the uploaded folder on PYTHONPATH; elsewhere the package must be installed (`pip install -e .`)."""

import sys

from pipeline.cli.train_downstream import main

if __name__ == "__main__":
    sys.exit(main())
