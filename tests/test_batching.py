import random

from pipeline.batching import collate, pack


def test_pack_respects_budget_and_keeps_every_item_once():
    rng = random.Random(0)
    lengths = [rng.randint(400, 300_000) for _ in range(300)]
    batches = pack(lengths, budget_samples=960_000, max_batch_size=16)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 960_000


def test_pack_oversized_item_alone_and_similar_lengths_together():
    assert pack([10, 1_000, 11, 12], budget_samples=100, max_batch_size=8) == [[1], [3, 2, 0]]


def test_collate_pads_with_zeros():
    import numpy as np

    wav, lengths = collate([np.ones(3, np.float32), np.full(5, 2, np.float32)])
    assert lengths.tolist() == [3, 5]
    assert wav.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
