"""Records: what flows between readers, transforms, datasets and tasks.

A record is one patient or image: named volumes that share one grid, with the voxel spacing in
mm. Nothing here assumes a grid size; OpenKBP's 128^3 is a property of that source, not of
rtgen. `Patient` is the record of a treatment-planning case (CT, dose, masks), the input of the
dose tasks; other tasks (CT-to-MR synthesis, any-to-any) use `Record` with their own names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Spacing = tuple[float, float, float]


@dataclass
class Record:
    """Named volumes on one grid (checked), with spacing in mm per array axis."""

    id: str
    volumes: dict[str, np.ndarray] = field(default_factory=dict)
    spacing: Spacing = (1.0, 1.0, 1.0)

    def __post_init__(self):
        shapes = {name: np.shape(v) for name, v in self.volumes.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"record {self.id}: volumes on different grids {shapes}")

    @property
    def grid(self) -> tuple[int, ...]:
        return next(iter(self.volumes.values())).shape if self.volumes else ()

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))


@dataclass
class Patient:
    """A treatment-planning case. Masks are boolean; `structures` holds only those present."""

    id: str
    ct: np.ndarray | None  # int16, Hounsfield units; None when loaded with load_ct=False
    dose: np.ndarray | None  # float32, Gy; None for unlabeled patients
    possible_dose_mask: np.ndarray
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    spacing: Spacing = (1.0, 1.0, 1.0)  # mm, per array axis

    @property
    def grid(self) -> tuple[int, ...]:
        return self.possible_dose_mask.shape

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def volume_cc(self, name: str) -> float:
        return float(self.structures[name].sum()) * self.voxel_volume_mm3 / 1000.0

    def to_record(self) -> Record:
        """The same case as named volumes (ct, dose, possible_dose_mask, one per structure)."""
        volumes = {"ct": self.ct, "dose": self.dose, "possible_dose_mask": self.possible_dose_mask, **self.structures}
        return Record(self.id, {k: v for k, v in volumes.items() if v is not None}, self.spacing)
