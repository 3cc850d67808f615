"""Length-aware grouping: short texts are not padded to long ones."""

from __future__ import annotations

from berth.flavors.text_encoder import length_groups


def test_groups_are_full_batches_of_similar_length() -> None:
    texts = ["x" * n for n in (100, 5, 90, 6, 95, 4, 7, 80)]
    groups = length_groups(texts, batch_size=3)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    assert all(len(g) <= 3 for g in groups)
    for group in groups:
        lengths = [len(texts[i]) for i in group]
        assert lengths == sorted(lengths, reverse=True)
        assert max(lengths) <= 2 * min(lengths)
    assert [len(texts[i]) for i in groups[0]] == [100, 95, 90]


def test_equal_lengths_fill_batches() -> None:
    groups = length_groups(["same"] * 10, batch_size=4)
    assert [len(g) for g in groups] == [4, 4, 2]
