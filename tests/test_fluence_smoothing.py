"""The fluence smoothing term of the optimisation, on a small synthetic influence matrix (no dose engine)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rtgen.planning.engine import Influence
from rtgen.planning.fluence import fluence_maps, neighbour_pairs
from rtgen.planning.optimise import Objective, optimise


def _influence(seed: int = 0) -> Influence:
    """Two beams of 4 x 5 beamlets (8 mm) over 300 voxels: each beamlet doses a random few voxels."""
    rng = np.random.default_rng(seed)
    n_vox, per_beam = 300, 20
    beam = np.repeat([0, 1], per_beam).astype(np.int32)
    cols, rows = np.meshgrid(np.arange(5), np.arange(4))
    x = np.tile(cols.ravel() * 8.0, 2)
    y = np.tile(rows.ravel() * 8.0, 2)
    m = sp.random(n_vox, 2 * per_beam, density=0.3, random_state=rng, format="csc", dtype=np.float64)
    m.data = 0.2 + rng.random(m.data.size)
    return Influence(sp.csc_array(m), np.arange(n_vox), (n_vox, 1, 1), beam, x, y, (0.0, 180.0), (0.0, 0.0, 0.0), 8.0)


def test_neighbour_pairs_are_the_side_by_side_beamlets_of_each_map():
    inf = _influence()
    pairs = neighbour_pairs(inf)
    assert len(pairs) == 2 * (4 * 4 + 3 * 5)  # per beam: 4 rows of 4 pairs along x, 3 x 5 pairs across
    assert (inf.beam[pairs[:, 0]] == inf.beam[pairs[:, 1]]).all()
    step = np.abs(inf.x_mm[pairs[:, 0]] - inf.x_mm[pairs[:, 1]]) + np.abs(inf.y_mm[pairs[:, 0]] - inf.y_mm[pairs[:, 1]])
    assert np.allclose(step, 8.0)


def _variation(inf, w) -> float:
    return sum(float(np.abs(np.diff(b.map, axis=1)).sum() + np.abs(np.diff(b.map, axis=0)).sum())
               for b in fluence_maps(inf, w))


def test_smoothing_flattens_the_maps_and_reports_what_it_minimised():
    inf = _influence()
    rng = np.random.default_rng(1)
    pred = inf.matrix @ rng.uniform(0, 3, inf.n_beamlets)  # a deliverable but modulated dose,
    pred *= 70.0 / pred[:60].mean()  # 70 Gy in the target on average
    pairs = neighbour_pairs(inf)
    kw = dict(structures={"PTV70": np.arange(0, 60)}, voxel_volume_mm3=64.0, pairs=pairs)
    mimic_only = dict(target_weight=0.0, hot_weight=0.0, iterations=500)
    rough = optimise(inf.matrix, pred, objective=Objective(smooth_weight=0.0, **mimic_only), **kw)
    smooth = optimise(inf.matrix, pred, objective=Objective(smooth_weight=1000.0, **mimic_only), **kw)
    assert _variation(inf, smooth.weights) < 0.5 * _variation(inf, rough.weights)
    assert np.abs(inf.matrix @ rough.weights - pred).mean() < 0.05 * pred.mean()  # unsmoothed: the dose itself
    # the objective reported is mimicking + smoothing, recomputed here by hand from the weights
    w = smooth.weights
    d1 = inf.matrix @ np.ones(inf.n_beamlets)
    w0 = 70.0 / d1[:60].mean()  # the flat start: the mean target dose at the prescription
    diff = w[pairs[:, 0]] - w[pairs[:, 1]]
    expected = np.mean((inf.matrix @ w - pred) ** 2) + 1000.0 * np.mean(diff**2) / w0**2
    assert smooth.objective == pytest.approx(expected, rel=1e-6)  # products in float32
    assert smooth.history[-1] < smooth.history[0]
