"""Applications on the extraction output, apart from the extraction flow itself.

- `train`: downstream classifiers on the Parquet features (the IEMOCAP recipe), `jobs/train_downstream.py`.
- `viz`: UMAP maps and label charts of an output, `jobs/visualize.py`.
- `importers`: manifests for public emotion corpora (IEMOCAP, EmoBox), `jobs/prepare_*.py`.

Nothing in the extraction flow (`pipeline/run.py` and the modules it uses) imports this package.
"""
