"""Physical and storage limits that every reader and every metric enforces.

They live in one place so that a CSV reader, a NIfTI reader and the DVH code refuse the same
inputs with the same words. A value outside them is never a plan: it is a unit error (cGy read as
Gy), a corrupt file or an overflow, and it is cheaper to say so at once than after a minute of
compute.
"""

from __future__ import annotations

DOSE_CEILING_GY = 200.0
"""No external-beam plan puts 200 Gy in a voxel (head-and-neck plans peak near 80 Gy); a dose
above it is almost always cGy or mGy read as Gy."""

DOSE_NEGATIVE_TOLERANCE_GY = 1e-3
"""Doses below 0 by at most this much are rounding noise of an interpolating exporter and are
clipped to 0; anything more negative is refused."""

CT_HU_RANGE = (-32768, 32767)
"""What int16 stores without wrapping; rtgen holds CT in int16 HU."""

MASK_VALUES = (0, 1)
"""A mask voxel is outside (0) or inside (1); any other value means the file is not a mask."""
