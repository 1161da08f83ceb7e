"""Applications on the extraction output, apart from the extraction flow itself.

- `train`: downstream classifiers on the Parquet features (the IEMOCAP recipe), `e2v-train`.
- `viz`: UMAP maps and label charts of an output, `e2v-visualize`.
- `importers`: manifests for public emotion corpora (IEMOCAP, EmoBox), `e2v-prepare-*`.

Nothing in the extraction flow (`pipeline/run.py` and the modules it uses) imports this package.
"""
