"""A tiny head-and-neck-like phantom that the photon engine plans in seconds: a water cylinder
(40 x 40 x 12 voxels of 4 x 4 x 5 mm) with a PTV70 inside a PTV56 and a cord behind them."""

from __future__ import annotations

import numpy as np

from rtgen.data.records import Patient


def phantom(pid: str = "pt_phantom", shape=(40, 40, 12), spacing=(4.0, 4.0, 5.0)) -> Patient:
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    yc, xc, zc = (shape[0] - 1) / 2, (shape[1] - 1) / 2, (shape[2] - 1) / 2
    body = (i - yc) ** 2 + (j - xc) ** 2 < (0.42 * shape[0]) ** 2
    ct = np.where(body, 20, -1000).astype(np.int16)
    r2 = ((i - yc + 3) * spacing[0]) ** 2 + ((j - xc) * spacing[1]) ** 2 + ((k - zc) * spacing[2]) ** 2
    ptv70 = r2 < 16.0**2
    ptv56 = (r2 < 26.0**2) & ~ptv70
    cord = (((i - yc - 9) * spacing[0]) ** 2 + ((j - xc) * spacing[1]) ** 2 < 8.0**2) & body
    return Patient(pid, ct, None, body, {"PTV56": ptv56, "PTV70": ptv70, "SpinalCord": cord}, spacing)
