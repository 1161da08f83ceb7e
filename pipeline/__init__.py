"""emotion2vec-pipeline: batch emotion features and labels with emotion2vec on Ray Data."""

__version__ = "0.1.0"
