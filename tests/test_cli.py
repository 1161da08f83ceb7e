"""The commands: console scripts declared in pyproject.toml, `python -m pipeline.cli.<name>`, and the
`jobs/<name>.py` wrappers that `ray job submit --working-dir .` runs; nothing edits sys.path."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_is_a_cli_main_with_a_jobs_wrapper():
    found = scripts()
    assert "e2v-extract" in found
    for name, target in found.items():
        module, _, func = target.partition(":")
        assert module.startswith("pipeline.cli.") and func == "main", (name, target)
        assert callable(getattr(importlib.import_module(module), func))
        wrapper = ROOT / "jobs" / f"{module.rsplit('.', 1)[1]}.py"
        assert f"from {module} import main" in wrapper.read_text(), wrapper


@pytest.mark.parametrize("name", sorted(scripts()))
def test_each_command_answers_help(name, capsys):
    module = importlib.import_module(scripts()[name].partition(":")[0])
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["jobs/extract.py"], ["-m", "pipeline.cli.extract"]])
def test_extract_runs_as_a_script_and_as_a_module(argv, tmp_path):
    """As `ray job submit` runs it: from the repository root, the package found on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, *argv, "--config", str(tmp_path / "missing.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().endswith("config file not found"), r.stderr[-2000:]


def test_no_script_edits_sys_path():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("jobs", "bench", "pipeline", "tests")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def _with_a_bad_log_level(module: str, argv: list[str], how: str) -> subprocess.CompletedProcess:
    """`python -m <module> <argv>` with the log level `loud`, as a flag or in E2V_LOG_LEVEL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if how == "flag":
        argv = [*argv, "--log-level", "loud"]
    else:
        env["E2V_LOG_LEVEL"] = "loud"
    return subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_extract_with_an_unknown_log_level_exits_2_with_one_error_line(how, tmp_path):
    """README: exit 2 for a bad config or argument, and every failure ends in one `error:` line (it
    was the logging module's traceback, exit 1)."""
    r = _with_a_bad_log_level("pipeline.cli.extract", ["--config", str(tmp_path / "missing.yaml")], how)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "error:" in last and "log-level" in last, r.stderr[-2000:]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_train_with_an_unknown_log_level_exits_2_with_one_error_line(how, tmp_path):
    """e2v-train: exit 2 for a bad config or argument (its docstring, README). An unknown --log-level
    (or E2V_LOG_LEVEL) was the logging module's ValueError traceback, exit 1."""
    argv = ["--features", str(tmp_path / "none"), "--label-column", "emotion", "--fold-column", "session"]
    argv += ["--output", str(tmp_path / "probe")]
    r = _with_a_bad_log_level("pipeline.cli.train_downstream", argv, how)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "error:" in last and "log-level" in last, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


def test_visualize_and_train_with_an_output_that_is_a_file_exit_2_in_one_line(tmp_path, capsys):
    """e2v-visualize and e2v-train: exit 2 on bad input, one `error:` line (their docstrings). An
    --output naming an existing file was a FileExistsError / NotADirectoryError traceback (exit 1)."""
    from pipeline.cli import train_downstream, visualize

    from .downstream_synth import write_synthetic

    features = write_synthetic(tmp_path / "features", n=48, files=1)
    taken = tmp_path / "report.txt"
    taken.write_text("not a folder\n")
    argv = ["--features", str(features), "--output", str(taken)]
    assert visualize.main(argv) == 2
    train = ["--label-column", "emotion", "--fold-column", "session", "--epochs", "1", "--input", "utterance"]
    assert train_downstream.main(argv + train) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert len(err) == 2 and all(str(taken) in x for x in err), err


@pytest.mark.parametrize("where", ["a file", "under a file", "an http URL"])
def test_extract_with_an_output_path_it_cannot_write_exits_2_naming_the_key(where, tmp_path, capsys):
    """docs/architecture.md: exit 2 for an unusable output, one line naming the key. An output.path
    that is a file, lies under one, or is an http(s) URL (read-only) was FileExistsError /
    NotADirectoryError / ReadOnlyError reported as a failure under Ray (exit 1), not naming the key."""
    from pipeline.cli.extract import main

    taken = tmp_path / "notes.txt"
    taken.write_text("a file\n")
    out = {"a file": str(taken), "under a file": str(taken / "out"), "an http URL": "https://127.0.0.1:9/out"}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {ROOT / 'samples/demo/manifest.jsonl'}\n  limit: 2\n"
        f"model:\n  source: {tmp_path / 'no-model'}\noutput:\n  path: {out[where]}\n"
    )
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output.path") and out[where] in err[0], err
    assert taken.read_text() == "a file\n"


@pytest.mark.parametrize("value", ["0", "-5"])
def test_visualize_max_points_below_one_is_an_argument_error(value, tmp_path, capsys):
    """`--max-points 0` sampled no rows and said "no ok rows in <features>", blaming an output full of
    rows; it is an argument error naming the option (exit 2)."""
    from pipeline.cli import visualize

    from .downstream_synth import write_synthetic

    features = write_synthetic(tmp_path / "features", n=24, files=1)
    with pytest.raises(SystemExit) as e:
        visualize.main(
            ["--features", str(features), "--output", str(tmp_path / "viz"), "--max-points", value]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--max-points" in err and "at least 1" in err and "Traceback" not in err


def test_vad_without_silero_is_refused_before_anything_runs(tmp_path):
    """`audio.segmentation: vad` on an environment without silero-vad failed in every decode task, after
    the manifest count, Ray's start and the model's load: exit 1 and Ray's task errors. The job refuses
    it first: exit 2, one line naming the key and what to install, no Ray started."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "path": str(ROOT / "samples/demo/a.wav")}) + "\n")
    config = tmp_path / "job.yaml"
    config.write_text(
        f"input:\n  manifest: {manifest}\noutput:\n  path: {tmp_path / 'out'}\n"
        f"audio:\n  segmentation: vad\nmodel:\n  source: {tmp_path / 'no-model'}\n"
    )
    child = textwrap.dedent(
        """
        import importlib.util, sys

        # an environment without the vad extra: the package lookup finds nothing
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "silero_vad" else real(name, *a)
        from pipeline.cli import extract
        code = extract.main(["--config", sys.argv[1]])
        print("ray imported" if "ray" in sys.modules and sys.modules["ray"].is_initialized() else "no ray")
        sys.exit(code)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", child, str(config)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(errors) == 1 and "audio.segmentation: vad" in errors[0] and "silero-vad" in errors[0], errors
    assert "no ray" in r.stdout and not (tmp_path / "out").exists()
