"""Step-and-shoot leaf sequencing (Xia and Verhey's reducing levels) of fluence maps."""

from __future__ import annotations

import numpy as np
import pytest

from rtgen.dosimetry.sequencing import SequencingError, quantise, reducing_levels, sequence_map


def _check(seq, shape_cols):
    for s in seq.segments:
        assert (s.left <= s.right).all()  # leaves never cross
        assert s.left.shape == s.right.shape == (len(seq.leaf_edges) - 1,)
        assert seq.column_edges[0] <= s.left.min() and s.right.max() <= seq.column_edges[-1]
    # the segments give the quantised map back exactly, in integer levels
    levels = sum(s.level * a for s, a in zip(seq.segments, seq.apertures().astype(int)))
    np.testing.assert_array_equal(levels, seq.quantised)
    np.testing.assert_allclose(seq.delivered(), seq.quantised * seq.step, atol=1e-9)
    assert seq.total_weight == pytest.approx(sum(s.weight for s in seq.segments))


def test_worked_example():
    # one row 0 1 3 2 0 with 3 levels (step 1): d = 2 opens columns 2-3 (3, 2 -> 1, 0); d = 1 opens 1-2
    seq = sequence_map(np.array([[0.0, 1.0, 3.0, 2.0, 0.0]]), levels=3, leaf_width=5, row_height=5, column_width=5,
                       origin=(0.0, -12.5))
    assert [(s.level, s.left[0], s.right[0]) for s in seq.segments] == [(2, -2.5, 7.5), (1, -7.5, 2.5)]
    assert seq.step == 1.0 and seq.total_weight == 3.0
    _check(seq, 5)


def test_two_runs_in_a_row_need_two_segments_and_closed_pairs_meet():
    q = np.array([[1, 0, 1], [0, 0, 0]])
    [(d, segments)] = reducing_levels(q)
    assert d == 1 and segments == [[(0, 1), None], [(2, 3), None]]
    seq = sequence_map(q.astype(float), levels=1)
    assert seq.n_segments == 2
    assert all(s.left[1] == s.right[1] for s in seq.segments)  # the empty row's pair stays closed
    _check(seq, 3)


@pytest.mark.parametrize("levels", [1, 5, 10, 20])
def test_random_maps_sum_back_within_the_quantisation(levels):
    rng = np.random.default_rng(levels)
    from scipy.ndimage import gaussian_filter

    f = np.clip(gaussian_filter(rng.random((24, 30)), 2) * 4 - 1.5, 0, None)  # smooth, with zero margins
    seq = sequence_map(f, levels=levels)
    _check(seq, f.shape[1])
    step = f.max() / levels
    assert seq.step == pytest.approx(step)
    assert np.abs(seq.delivered_on(5.0 * np.arange(25)) - f).max() <= step / 2 + 1e-12
    # at most ceil(log2 levels) + 1 level passes
    assert len(reducing_levels(seq.quantised)) <= int(np.ceil(np.log2(levels))) + 1
    if levels == 10:
        print(f"\n24 x 30 map, 10 levels: {seq.n_segments} segments, total weight {seq.total_weight:.2f}")


def test_leaf_width_twice_the_rows_delivers_the_pair_mean():
    f = np.array([[2.0, 2.0], [4.0, 0.0], [1.0, 1.0]])  # 3 rows of 5 mm under 10 mm leaves: 2 pairs
    seq = sequence_map(f, levels=100, leaf_width=10.0, row_height=5.0)
    assert len(seq.leaf_edges) == 3
    np.testing.assert_allclose(seq.leaf_fluence, [[3.0, 1.0], [0.5, 0.5]])  # the last pair half off the map
    np.testing.assert_allclose(seq.delivered(), [[3.0, 1.0], [0.5, 0.5]], atol=3.0 / 100 / 2)
    np.testing.assert_allclose(seq.delivered_on(np.array([0.0, 5, 10, 15])), [[3, 1], [3, 1], [0.5, 0.5]], atol=0.015)
    _check(seq, 2)


def test_empty_and_bad_maps():
    seq = sequence_map(np.zeros((3, 4)))
    assert seq.n_segments == 0 and seq.total_weight == 0 and not seq.delivered().any()
    assert quantise(np.zeros(3), 5)[1] == 0.0
    for bad, message in (((np.ones((2, 2)) * -1, {}), ">= 0"), ((np.ones(4), {}), "2-D"),
                         ((np.ones((2, 2)), {"levels": 0}), "levels"),
                         ((np.ones((2, 2)), {"leaf_width": 0}), "leaf width"),
                         ((np.full((2, 2), np.nan), {}), "finite")):
        with pytest.raises(SequencingError, match=message):
            sequence_map(bad[0], **bad[1])
