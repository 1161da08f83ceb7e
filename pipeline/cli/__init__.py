"""The command-line entry points, one module per command, each with `main(argv) -> exit code`.

Installed as console scripts (pyproject.toml `[project.scripts]`: `e2v-extract`, `e2v-train`,
`e2v-visualize`, `e2v-prepare-iemocap`, `e2v-prepare-emobox`), runnable as `python -m pipeline.cli.<name>`,
and wrapped by `jobs/<name>.py` for `ray job submit --working-dir .`, which puts the uploaded folder on
the job's PYTHONPATH but installs nothing.
"""

import argparse
import logging


def log_level(name: str) -> str:
    """A logging level name (any case; also from E2V_LOG_LEVEL): an unknown one is an argument error
    (exit 2, one line), not the logging module's traceback."""
    level = name.strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise argparse.ArgumentTypeError(f"unknown level {name!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return level


def positive_int(text: str) -> int:
    """An integer >= 1 (a count of rows, points, ...): 0 or a negative one is an argument error naming
    the value (exit 2), not a failure deep inside the command."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
