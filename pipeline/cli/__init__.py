"""The command-line entry points, one module per command, each with `main(argv) -> exit code`.

Installed as console scripts (pyproject.toml `[project.scripts]`: `e2v-extract`, `e2v-train`,
`e2v-visualize`, `e2v-prepare-iemocap`, `e2v-prepare-emobox`), runnable as `python -m pipeline.cli.<name>`,
and wrapped by `jobs/<name>.py` for `ray job submit --working-dir .`, which puts the uploaded folder on
the job's PYTHONPATH but installs nothing.
"""
