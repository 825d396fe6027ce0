"""From beamlet weights to fluence maps, step-and-shoot segments and the weights they deliver.

Each beam's beamlets lie on a regular grid of `bixel_mm` in the isocentre plane (IEC beam-limiting
device coordinates: x along the leaf travel, y across the leaf pairs). Its weights form a fluence
map (rows y, columns x) that `rtgen.dosimetry.sequencing` turns into segments; the fluence the
segments deliver, read back at each beamlet, gives the sequenced weights whose dose D w is the
dose that would be delivered. A beamlet-free cell that a leaf pair's averaging gives fluence (only
with leaves wider than the beamlets) cannot be delivered by the engine's beamlets and is reported
as lost fluence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtgen.dosimetry.sequencing import SequencedMap, sequence_map


@dataclass
class BeamFluence:
    """One beam's fluence map: map[r, c] is the beamlet at y = y0 + (r + 1/2) b, x = x0 + (c + 1/2) b."""

    gantry_angle: float
    map: np.ndarray
    x0: float  # mm, the left edge of column 0
    y0: float  # mm, the lower edge of row 0
    bixel_mm: float
    rows: np.ndarray  # per beamlet of this beam (in column order of the influence matrix): its row
    cols: np.ndarray
    columns: np.ndarray  # the influence matrix columns of this beam's beamlets


def fluence_maps(inf, weights: np.ndarray) -> list[BeamFluence]:
    out = []
    b = inf.bixel_mm
    for k, angle in enumerate(inf.gantry_angles):
        columns = np.flatnonzero(inf.beam == k)
        x, y = inf.x_mm[columns], inf.y_mm[columns]
        if columns.size == 0:
            out.append(BeamFluence(angle, np.zeros((0, 0)), 0.0, 0.0, b, columns, columns, columns))
            continue
        cols = np.rint((x - x.min()) / b).astype(int)
        rows = np.rint((y - y.min()) / b).astype(int)
        fmap = np.zeros((rows.max() + 1, cols.max() + 1))
        fmap[rows, cols] = weights[columns]
        out.append(BeamFluence(angle, fmap, float(x.min() - b / 2), float(y.min() - b / 2), b, rows, cols, columns))
    return out


def neighbour_pairs(inf) -> np.ndarray:
    """(n, 2) influence-matrix columns of beamlets side by side in a beam's fluence map (along the leaf
    travel or across the leaves): the pairs that the smoothing term of the optimisation compares."""
    pairs = []
    for bf in fluence_maps(inf, np.zeros(inf.n_beamlets)):
        if bf.columns.size == 0:
            continue
        index = np.full(bf.map.shape, -1, np.int64)
        index[bf.rows, bf.cols] = bf.columns
        for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])):
            keep = (a >= 0) & (b >= 0)
            pairs.append(np.stack([a[keep], b[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


@dataclass
class SequencedPlan:
    beams: list[tuple[BeamFluence, SequencedMap | None]]
    weights: np.ndarray  # the sequenced beamlet weights
    lost_fraction: float  # share of the sequenced fluence on cells without a beamlet

    @property
    def n_segments(self) -> int:
        return sum(s.n_segments for _, s in self.beams if s is not None)


def sequence_plan(inf, weights: np.ndarray, levels: int = 10, leaf_width: float | None = None) -> SequencedPlan:
    """Sequence each beam's map (leaf width: the beamlet size unless given) and read the delivered weights back."""
    seq_weights = np.zeros_like(np.asarray(weights, np.float64))
    beams = []
    total = lost = 0.0
    for bf in fluence_maps(inf, weights):
        if bf.map.size == 0:
            beams.append((bf, None))
            continue
        s = sequence_map(bf.map, levels=levels, leaf_width=leaf_width or bf.bixel_mm, row_height=bf.bixel_mm,
                         column_width=bf.bixel_mm, origin=(bf.y0, bf.x0))
        delivered = s.delivered_on(bf.y0 + bf.bixel_mm * np.arange(bf.map.shape[0] + 1))
        seq_weights[bf.columns] = delivered[bf.rows, bf.cols]
        total += float(delivered.sum())
        lost += float(delivered.sum() - delivered[bf.rows, bf.cols].sum())
        beams.append((bf, s))
    return SequencedPlan(beams, seq_weights, max(0.0, lost / total) if total > 0 else 0.0)
