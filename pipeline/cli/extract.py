"""Extract emotion2vec features and labels for a manifest.

    e2v-extract --config configs/local.yaml [--set key.path=value ...]      # or python -m pipeline.cli.extract
    ray job submit --working-dir . -- python jobs/extract.py --config configs/cluster-gpu.yaml

Exit codes: 0 done (some rows may be error rows); 1 the run failed under Ray (what was committed
stays; rerun to resume); 2 bad config / manifest / model / output / unreachable cluster; 3 done but
the output's error fraction exceeds output.max_error_fraction.
"""

import argparse
import logging
import os
import sys

from .. import redact
from ..config import ConfigError, load_config
from ..interrupt import Interrupted, on_interrupt
from ..run import JobError, RunFailed, run
from . import log_level

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TOO_MANY_ERRORS = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    with redact.console():  # every line this process prints or logs: no secret in a URL gets out
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="job YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--log-level", type=log_level, default=os.environ.get("E2V_LOG_LEVEL", "WARNING"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        # a signal before the first row (the manifest count, the wait for a GPU) stops the job as one
        # during the run does: lease released, one line, 143 / 130
        with on_interrupt():
            result = run(cfg)
    except (ConfigError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        print(
            f"error: interrupted by {e.signal_name}: committed units are kept, nothing half-written is "
            f"visible; rerun the same command to resume",
            file=sys.stderr,
        )
        return e.exit_code
    except RunFailed as e:
        print(f"error: {e}; committed units are kept: rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback with --log-level DEBUG
        logging.getLogger("extract").debug("unexpected failure", exc_info=True)
        print(
            f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
            f"(rerun with --log-level DEBUG for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if result.too_many_errors:
        print(f"error: {result.message}", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
