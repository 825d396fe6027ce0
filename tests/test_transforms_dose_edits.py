"""Per-structure dose scaling for ScardNFT's clinical exploration."""

import numpy as np
import pytest

from rtgen.data.transforms.dose_edits import structure_scale_field


def _structures():
    oar, ptv56, ptv70 = (np.zeros((4, 6, 6), bool) for _ in range(3))
    oar[:, :3] = True
    ptv56[1:3, 1:5, 1:5] = True
    ptv70[1:3, 2:4, 2:4] = True
    return {"Larynx": oar, "PTV56": ptv56, "PTV70": ptv70}


def test_one_factor_per_structure_targets_win_overlaps_highest_prescription_first():
    s = _structures()
    field = structure_scale_field(s, (4, 6, 6), 0.1, np.random.default_rng(0))
    rest = ~(s["Larynx"] | s["PTV56"] | s["PTV70"])
    for region in (rest, s["PTV70"], s["PTV56"] & ~s["PTV70"], s["Larynx"] & ~s["PTV56"]):
        assert np.unique(field[region]).size == 1
    assert len({field[rest][0], field[s["PTV70"]][0], field[s["PTV56"] & ~s["PTV70"]][0],
                field[s["Larynx"] & ~s["PTV56"]][0]}) == 4


def test_zero_sigma_is_no_edit_and_factors_are_clipped():
    s = _structures()
    assert np.all(structure_scale_field(s, (4, 6, 6), 0.0, np.random.default_rng(0)) == 1)
    big = structure_scale_field(s, (4, 6, 6), 100.0, np.random.default_rng(0), limit=0.5)
    assert big.min() >= 0.5 and big.max() <= 1.5


def test_bad_sigma_and_mismatched_masks_are_refused():
    with pytest.raises(ValueError, match="sigma"):
        structure_scale_field(_structures(), (4, 6, 6), -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="PTV70"):
        structure_scale_field({"PTV70": np.ones((2, 2, 2), bool)}, (4, 6, 6), 0.1, np.random.default_rng(0))


def test_targets_can_be_held_at_their_dose():
    s = _structures()
    field = structure_scale_field(s, (4, 6, 6), 0.1, np.random.default_rng(0), targets=False)
    assert np.all(field[s["PTV56"] | s["PTV70"]] == 1)
    assert field[s["Larynx"] & ~s["PTV56"]][0] != 1
