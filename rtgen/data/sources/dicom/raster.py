"""Contours <-> masks on the CT grid: the even-odd rasterisation of RTSTRUCT polygons (reading) and
the marching-squares polygons of a mask (writing), chosen so that writing then reading a mask gives
it back. Pure geometry on numbers; no DICOM here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtgen.data.sources.dicom.geometry import TOL, CtReference


def _fill_even_odd(col: np.ndarray, row: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a (rows, cols) grid whose centres lie inside the polygon (col, row), even-odd rule,
    by scanlines: each edge crossing a row of centres (half-open in row, so a vertex counts once)
    toggles every pixel right of it; a cumulative sum's parity is then the inside. Linear in the
    crossings rather than in pixels x vertices: the body of a 512 x 512 x 98 planning CT in 0.04 s
    rather than 4 s by a point-in-polygon test of each pixel, with the same voxels. A centre exactly
    on an edge is inside when the edge is on its left."""
    ny, nx = shape
    x0, y0 = col, row
    x1, y1 = np.roll(col, -1), np.roll(row, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo), 0, ny).astype(np.int64)
    last = np.clip(np.ceil(hi), 0, ny).astype(np.int64)  # rows first .. last - 1: lo <= r < hi
    n = np.maximum(last - first, 0)
    toggles = np.zeros((ny, nx + 1), np.int32)
    if n.sum():
        edge = np.repeat(np.arange(len(col)), n)
        r = first[edge] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        x = x0[edge] + (r - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, nx)  # centres c > x
        np.add.at(toggles, (r, start), 1)
    return (np.cumsum(toggles, axis=1)[:, :nx] & 1).astype(bool)


def rasterise_contours(contours: Sequence[np.ndarray], ref: CtReference) -> tuple[np.ndarray, int]:
    """Contours (patient mm) -> a mask on the CT grid, with the even-odd rule: each polygon is filled
    on its slice and XOR-ed with the others there, so a hole drawn as a second contour stays empty.
    A contour is placed on the slice within half a slice spacing of its z; returns (mask, contours
    off the grid)."""
    ny, nx, nz = ref.shape
    dy, dx, dz = ref.spacing
    ox, oy, oz = ref.origin
    mask = np.zeros(ref.shape, bool)
    off = 0
    for pts in contours:
        kf = (oz - float(np.mean(pts[:, 2]))) / dz
        k = round(kf) if np.isfinite(kf) else -1
        if not (0 <= k < nz) or abs(kf - k) * dz > dz / 2 + TOL:
            off += 1
            continue
        col = (pts[:, 0] - ox) / dx
        row = (pts[:, 1] - oy) / dy
        if not (np.all(np.isfinite(col)) and np.all(np.isfinite(row))):
            off += 1
            continue
        c0, c1 = max(int(np.floor(col.min())), 0), min(int(np.ceil(col.max())), nx - 1)
        r0, r1 = max(int(np.floor(row.min())), 0), min(int(np.ceil(row.max())), ny - 1)
        if c1 < c0 or r1 < r0:
            off += 1
            continue
        inside = _fill_even_odd(col - c0, row - r0, (r1 - r0 + 1, c1 - c0 + 1))
        mask[r0:r1 + 1, c0:c1 + 1, k] ^= inside
    return mask, off


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (row, col pixel coordinates) around a 2D mask at level 0.5 (contourpy's
    marching squares on the zero-padded mask): outer boundaries and holes as separate polygons, so
    the even-odd rule restores the mask; every polygon passes strictly between pixel centres."""
    import contourpy

    padded = np.pad(mask2d.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate, corner_mask=False)
    polys = []
    for line in gen.lines(0.5):
        xy = np.asarray(line, np.float64)
        if len(xy) >= 4:
            if np.allclose(xy[0], xy[-1]):
                xy = xy[:-1]
            polys.append(np.c_[xy[:, 1] - 1, xy[:, 0] - 1])  # (row, col) on the unpadded grid
    return polys
