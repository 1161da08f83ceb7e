"""Fixtures for tests, benchmarks and the demo; nothing in the extraction flow imports them.

- `samples`: real speech made with espeak-ng and sox (`python -m pipeline.testing.samples`).
- `checkpoints`: random-init emotion2vec checkpoints written in the published on-disk layouts.
"""
