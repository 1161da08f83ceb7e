"""`e2v-extract` as a script: `python jobs/extract.py --help`. For `ray job submit --working-dir .`, which
puts the uploaded folder on PYTHONPATH; elsewhere the package must be installed (`pip install -e .`)."""

import sys

from pipeline.cli.extract import main

if __name__ == "__main__":
    sys.exit(main())
