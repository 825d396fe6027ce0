"""Per-voxel features for dose models that see one voxel at a time (gradient boosting).

A tree model has no receptive field: everything it knows about where a voxel sits relative to the
targets, the body and the beams must be a number in that voxel. These are the numbers a planner
reasons with: the prescription nearby and how far it is (signed distances, prescription maps
blurred at several scales), the tissue in between (CT, depth below the body surface), the organs
that constrain the plan (OAR masks and, with `oar_distances`, how far each is) and, from `rtgen.data.transforms.beam_features`, where the beams
from the usual coplanar gantry angles carry dose (beam-shadow ray sums and their fall-off).

A PTV the patient lacks gives NaN distances: LightGBM treats NaN as "missing", which is what it is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import ndimage

from rtgen.core.structures import OARS, PRESCRIPTION_GY, TARGETS
from rtgen.data.records import Patient
from rtgen.data.transforms.features import signed_distance_mm

FEATURES_VERSION = 2
"""Bump when a feature's definition changes: on-disk caches of training voxels are keyed by it."""
DISTANCE_CAP_MM = 150.0
BODY_HU = -500.0  # CT above this is tissue: the body outline, for depth below the surface


@dataclass
class VoxelFeatureConfig:
    blur_mm: tuple[Annotated[float, Field(gt=0, le=200)], ...] = (5.0, 10.0, 20.0, 40.0)  # prescription map blurs
    beams: bool = True  # beam-shadow features (rtgen.data.transforms.beam_features)
    samples_per_patient: Annotated[int, Field(ge=100, le=2_000_000)] = 20000  # training voxels drawn per patient
    edge_mm: Annotated[float, Field(ge=0, le=100)] = 10.0  # voxels this close to a PTV surface are drawn more often
    edge_weight: Annotated[float, Field(ge=1, le=100)] = 4.0
    oar_weight: Annotated[float, Field(ge=1, le=100)] = 2.0
    oar_distances: bool = False  # signed distance to each OAR (mm): where a plan bends its dose around them

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blur_mm"] = list(self.blur_mm)
        return d

    def key(self) -> str:
        """A short hash of everything that changes the features (for on-disk caches)."""
        d = self.to_dict()
        if not d["oar_distances"]:  # added later: caches written before it stay valid
            del d["oar_distances"]
        text = json.dumps({"version": FEATURES_VERSION, **d}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def feature_names(config: VoxelFeatureConfig) -> list[str]:
    names = ["ct_hu", "rx_gy", "body_depth_mm", "ptv_distance_mm", "nearest_rx_gy", "axial_offset_mm",
             "inplane_ptv_distance_mm"]
    names += [f"{t}_distance_mm" for t in TARGETS]
    names += [f"rx_blur_{s:g}mm" for s in config.blur_mm]
    names += [f"{o}_mask" for o in OARS]
    if config.oar_distances:
        names += [f"{o}_distance_mm" for o in OARS]
    if config.beams:
        from rtgen.data.transforms.beam_features import GeometryConfig

        names += list(GeometryConfig().feature_names)
    return names


def _prescription_map(patient: Patient) -> np.ndarray:
    rx = np.zeros(patient.grid, np.float32)
    for t in TARGETS:
        if t in patient.structures:
            np.maximum(rx, patient.structures[t] * np.float32(PRESCRIPTION_GY[t]), out=rx)
    return rx


def feature_volumes(patient: Patient, config: VoxelFeatureConfig = VoxelFeatureConfig()) -> dict[str, np.ndarray]:
    """name -> float32 volume on the patient's grid, in `feature_names(config)` order."""
    if patient.ct is None:
        raise ValueError(f"patient {patient.id} was loaded without CT")
    spacing = patient.spacing
    rx = _prescription_map(patient)
    out: dict[str, np.ndarray] = {"ct_hu": np.clip(patient.ct, -1000, 3000).astype(np.float32), "rx_gy": rx}
    body = patient.ct > BODY_HU
    out["body_depth_mm"] = (-np.clip(signed_distance_mm(body, spacing), -DISTANCE_CAP_MM, DISTANCE_CAP_MM)
                            if body.any() else np.zeros(patient.grid, np.float32))
    any_ptv = rx > 0
    if any_ptv.any():
        outside, (i, j, k) = ndimage.distance_transform_edt(~any_ptv, sampling=spacing, return_indices=True)
        out["ptv_distance_mm"] = np.clip(signed_distance_mm(any_ptv, spacing), -DISTANCE_CAP_MM, DISTANCE_CAP_MM)
        out["nearest_rx_gy"] = rx[i, j, k]  # the prescription of the closest target voxel
    else:
        out["ptv_distance_mm"] = np.full(patient.grid, np.nan, np.float32)
        out["nearest_rx_gy"] = np.zeros(patient.grid, np.float32)
    out["axial_offset_mm"], out["inplane_ptv_distance_mm"] = _axial_and_inplane(any_ptv, spacing)
    for t in TARGETS:
        out[f"{t}_distance_mm"] = _capped_distance(patient.structures.get(t), spacing, patient.grid)
    for s in config.blur_mm:
        out[f"rx_blur_{s:g}mm"] = ndimage.gaussian_filter(rx, [s / v for v in spacing], mode="constant")
    for o in OARS:
        mask = patient.structures.get(o)
        out[f"{o}_mask"] = (mask.astype(np.float32) if mask is not None else np.zeros(patient.grid, np.float32))
    if config.oar_distances:  # after all the masks: the order of `feature_names`
        for o in OARS:
            out[f"{o}_distance_mm"] = _capped_distance(patient.structures.get(o), spacing, patient.grid)
    if config.beams:
        from rtgen.data.transforms.beam_features import GeometryConfig, geometry_features

        out.update(geometry_features(patient, GeometryConfig()))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _capped_distance(mask: np.ndarray | None, spacing, grid) -> np.ndarray:
    """Signed distance to a structure's surface (mm, negative inside), capped; NaN if the patient lacks it."""
    if mask is None or not mask.any():
        return np.full(grid, np.nan, np.float32)
    return np.clip(signed_distance_mm(mask, spacing), -DISTANCE_CAP_MM, DISTANCE_CAP_MM)


def _axial_and_inplane(ptv: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distance from a voxel's slice to the nearest slice holding a target (mm, 0 within the targets'
    axial extent), and the in-plane distance to the target within its own slice (NaN on slices
    without one). Coplanar beams spread dose in-plane but barely along the couch axis, so the two
    directions fall off differently and one isotropic distance cannot say which one a voxel is in."""
    shape = ptv.shape
    axial = np.full(shape, np.nan, np.float32)
    inplane = np.full(shape, np.nan, np.float32)
    slices = np.flatnonzero(ptv.any(axis=(0, 1)))
    if slices.size == 0:
        return axial, inplane
    k = np.arange(shape[2])
    offset = np.maximum(slices[0] - k, 0) + np.maximum(k - slices[-1], 0)
    axial[:] = (offset * spacing[2]).astype(np.float32)[None, None, :]
    for z in slices:
        inplane[:, :, z] = ndimage.distance_transform_edt(~ptv[:, :, z], sampling=spacing[:2])
    return axial, np.minimum(inplane, DISTANCE_CAP_MM)


def feature_matrix(patient: Patient, config: VoxelFeatureConfig, where: np.ndarray) -> np.ndarray:
    """(N, F) float32 features of the voxels where `where` (a boolean mask or flat indices) is set."""
    return _columns(feature_volumes(patient, config), config, where)


def _columns(volumes: dict[str, np.ndarray], config: VoxelFeatureConfig, where: np.ndarray) -> np.ndarray:
    flat = np.flatnonzero(where) if np.asarray(where).dtype == bool else np.asarray(where)
    return np.stack([volumes[n].ravel()[flat] for n in feature_names(config)], axis=1)


def training_voxels(patient: Patient, config: VoxelFeatureConfig, seed: int,
                    ptv_distance_mm: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of the voxels drawn for training: inside the possible dose mask, more often near
    PTV surfaces (where the DVH of targets is decided) and in OARs (where their DVH is).
    `ptv_distance_mm` is the feature of that name when already computed (NaN: no target)."""
    pdm = patient.possible_dose_mask.ravel()
    candidates = np.flatnonzero(pdm)
    if candidates.size == 0:
        return candidates
    weight = np.ones(candidates.size)
    if ptv_distance_mm is None:
        rx = _prescription_map(patient)
        ptv_distance_mm = (signed_distance_mm(rx > 0, patient.spacing) if (rx > 0).any()
                           else np.full(patient.grid, np.nan, np.float32))
    near = np.abs(ptv_distance_mm).ravel()[candidates] <= config.edge_mm  # NaN (no target): never near
    weight[near] *= config.edge_weight
    oar = np.zeros(patient.grid, bool)
    for o in OARS:
        if o in patient.structures:
            oar |= patient.structures[o]
    weight[oar.ravel()[candidates]] *= config.oar_weight
    rng = np.random.default_rng(seed)
    n = min(config.samples_per_patient, candidates.size)
    return np.sort(rng.choice(candidates, size=n, replace=False, p=weight / weight.sum()))


def training_sample(patient: Patient, config: VoxelFeatureConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, F) float32, y (N,) dose in Gy) for one labelled patient."""
    if patient.dose is None:
        raise ValueError(f"patient {patient.id} has no dose to learn from")
    volumes = feature_volumes(patient, config)  # once: the draw reuses its distance to the targets
    idx = training_voxels(patient, config, seed, volumes["ptv_distance_mm"])
    return _columns(volumes, config, idx), patient.dose.ravel()[idx].astype(np.float32)


def cached_training_sample(path: Path, config: VoxelFeatureConfig, seed: int, cache_dir: Path | None):
    """`training_sample` of the patient at `path`, kept in `cache_dir` keyed by the features, the
    seed and the source file's size and time (a stale or corrupt cache is recomputed)."""
    from rtgen.core.atomic import atomic_path
    from rtgen.data.sources import load_patient

    cache = None
    if cache_dir is not None:
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{config.key()}|{seed}".encode())
        cache = Path(cache_dir) / f"{path.name.removesuffix('.npz')}-{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    return z["X"], z["y"]
            except Exception:  # noqa: BLE001 - a damaged cache is only recomputed
                pass
    X, y = training_sample(load_patient(path), config, seed)
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, X=X, y=y)
    return X, y
