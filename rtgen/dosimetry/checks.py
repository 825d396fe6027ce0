"""Refuse impossible doses at the door of every metric, not deep inside it.

A NaN poisons a mean silently, a dose of 1e39 Gy overflows, and a dose of 1e6 Gy makes a
0.1-Gy-binned DVH allocate ten million bins (41 s before anything fails). Each public metric
calls `require_dose` first, so the error names the quantity and the first bad voxel at once.
"""

from __future__ import annotations

import numpy as np

from rtgen.core.errors import ValueRangeError
from rtgen.core.limits import DOSE_CEILING_GY, DOSE_NEGATIVE_TOLERANCE_GY


def require_dose(dose, what: str = "dose") -> np.ndarray:
    """`dose` as float64 if it is finite and within [0, DOSE_CEILING_GY] Gy, else ValueRangeError."""
    arr = np.asarray(dose, np.float64)
    for bad, rule in ((~np.isfinite(arr), "is not finite (NaN or infinite)"),
                      (arr < -DOSE_NEGATIVE_TOLERANCE_GY, "is a negative dose"),
                      (arr > DOSE_CEILING_GY, f"is above the physical ceiling of {DOSE_CEILING_GY:g} Gy")):
        flat = np.flatnonzero(bad)
        if flat.size:
            i = int(flat[0])
            at = f" at voxel {tuple(int(v) for v in np.unravel_index(i, arr.shape))}" if arr.ndim > 1 else ""
            raise ValueRangeError(f"{what}: value {arr.flat[i]:.6g}{at} {rule} ({flat.size} such values)")
    return arr
