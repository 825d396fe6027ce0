"""The photon dose engine of a plan: pyRadPlan's pencil-beam engine on an rtgen patient, and its cache.

pyRadPlan (DKFZ's Python reimplementation of matRad, BSD-3) ships a generic 6 MV photon machine and
an SVD pencil-beam engine. Here a `Patient` becomes pyRadPlan's CT (its Hounsfield units, which
pyRadPlan turns into densities with its HU lookup table) and structure set (the PTVs as targets,
the OARs, and the possible dose mask as the external contour: the dose is computed inside it), a
coplanar beam set (`BeamSet`: 9 equispaced gantry angles by default, as the OpenKBP plans, 6 MV,
isocentre at the targets' centroid) is split into beamlets of `bixel_mm`, and the influence matrix
D (dose in Gy per unit beamlet weight) is computed.

Geometry. rtgen's array[i, j, k] is the voxel at patient (x0 + j dx, y0 + i dy, z0 - k dz) (LPS,
see `rtgen.data.sources.dicom`); pyRadPlan takes an image with increasing z, so the arrays are
flipped along k and transposed to (z, y, x) on the way in, and D's rows come back in rtgen's
order. pyRadPlan's gantry angles follow IEC 61217 for a head-first supine patient (gantry 0:
source anterior; 90: source at the patient's left), and a beamlet's beam's-eye-view position
(x, z) in the isocentre plane is its position along the IEC beam-limiting-device axes X (leaf
travel) and Y (across the leaf pairs): the fluence maps and the RTPLAN use these directly.

Cache. The influence matrix is written to ``<cache>/<patient>_<key>.npz`` (a plain npz of the
sparse matrix's arrays and the beamlet table; no pickle), where the key is a digest of the CT, the
masks, the spacing, the beam set and the pyRadPlan version: planning the same patient and beams
again (other objective weights, another input dose) reads it in seconds.

pyRadPlan is imported here only, when a plan is made: `rtgen --help` and every other command never
load it. Its install (pinned pydantic and numpy, a heavy AI dependency left out) is described on
the planning page of the docs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.errors import ConfigError, DataError, RtgenError
from rtgen.core.structures import OARS, TARGETS

CACHE_FORMAT = 1


class PlanningError(RtgenError):
    """A plan that cannot be made from this input (no target, an empty beam set, a missing engine)."""


def require_pyradplan():
    """pyRadPlan, imported; a clear error naming the install step where it is missing or cannot run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyRadPlan
    except ImportError as e:
        raise PlanningError(f"rtgen plan needs pyRadPlan ({e}); install it as the planning docs describe: "
                            "pip install --no-deps pyradplan==0.5.0 && pip install -r requirements-planning.txt") from None
    pyRadPlan.settings.xp.prefer_gpu = False  # the sparse influence matrix is a CPU (scipy) object here
    return pyRadPlan


@dataclass(frozen=True)
class BeamSet:
    """A coplanar photon beam set. `gantry_angles` in degrees (IEC 61217); `isocentre` in patient mm
    (LPS) or None for the targets' centroid; `bixel_mm` the beamlet size in the isocentre plane."""

    gantry_angles: tuple[float, ...] = tuple(40.0 * i for i in range(9))
    energy_mv: float = 6.0
    bixel_mm: float = 7.0
    isocentre: tuple[float, float, float] | None = None

    def __post_init__(self):
        if len(self.gantry_angles) == 0:
            raise ConfigError("beams", "the beam set is empty: give at least one gantry angle")
        for a in self.gantry_angles:
            if not isinstance(a, (int, float)) or not math.isfinite(a):
                raise ConfigError("beams", f"gantry angle {a!r} is not a number of degrees")
        if len(set(float(a) % 360 for a in self.gantry_angles)) != len(self.gantry_angles):
            raise ConfigError("beams", f"gantry angles repeat: {list(self.gantry_angles)}")
        if self.energy_mv != 6.0:
            raise ConfigError("beams", f"energy {self.energy_mv:g} MV: pyRadPlan's generic photon machine is 6 MV only")
        if not (isinstance(self.bixel_mm, (int, float)) and 1.0 <= self.bixel_mm <= 20.0):
            raise ConfigError("beams", f"beamlet size {self.bixel_mm!r} mm: expected 1 to 20 mm")
        if self.isocentre is not None and (len(self.isocentre) != 3 or not all(map(math.isfinite, self.isocentre))):
            raise ConfigError("beams", f"isocentre {self.isocentre!r}: expected three numbers (x, y, z mm)")

    @classmethod
    def equispaced(cls, n: int, **kwargs) -> BeamSet:
        if n < 1:
            raise ConfigError("beams", f"{n} beams: the beam set is empty")
        return cls(tuple(round(360.0 * i / n, 6) for i in range(n)), **kwargs)


@dataclass
class Influence:
    """D (csc, float32): rows = the body voxels (rtgen flat order, `body_index`), columns = beamlets;
    per beamlet its beam and its IEC BLD position (x along the leaf travel, y across the leaves, mm in
    the isocentre plane). Gy per unit weight."""

    matrix: object  # scipy.sparse.csc_array
    body_index: np.ndarray  # int64 flat indices of the rows in the patient grid
    grid: tuple[int, int, int]
    beam: np.ndarray  # int32, per beamlet
    x_mm: np.ndarray  # float64, per beamlet
    y_mm: np.ndarray
    gantry_angles: tuple[float, ...]
    isocentre: tuple[float, float, float]  # patient mm (LPS)
    bixel_mm: float
    timings: dict = field(default_factory=dict)

    @property
    def n_beamlets(self) -> int:
        return int(self.matrix.shape[1])

    def dose(self, weights: np.ndarray) -> np.ndarray:
        """The dose on the patient grid (Gy, float32; 0 outside the body) of beamlet `weights`."""
        out = np.zeros(int(np.prod(self.grid)), np.float32)
        out[self.body_index] = self.matrix @ np.asarray(weights, np.float32)  # float32 products: no copy of D
        return out.reshape(self.grid)

    def save(self, path: Path) -> None:
        from rtgen.core.atomic import atomic_path

        m = self.matrix
        meta = {"format": CACHE_FORMAT, "grid": list(self.grid), "gantry_angles": list(self.gantry_angles),
                "isocentre": list(self.isocentre), "bixel_mm": self.bixel_mm, "shape": list(m.shape)}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, data=m.data, indices=m.indices, indptr=m.indptr, body_index=self.body_index, beam=self.beam,
                     x_mm=self.x_mm, y_mm=self.y_mm, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> Influence:
        import scipy.sparse as sp

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != CACHE_FORMAT:
                    raise DataError(path, f"influence matrix cache format {meta.get('format')}, expected {CACHE_FORMAT}")
                indices = z["indices"]  # int32 (rows of the body); older caches kept int64
                if indices.dtype != np.int32 and meta["shape"][0] < 2**31:
                    indices = indices.astype(np.int32)
                indptr = z["indptr"]
                if indptr.dtype != np.int32 and indptr[-1] < 2**31:
                    indptr = indptr.astype(np.int32)
                m = sp.csc_array((z["data"], indices, indptr), shape=tuple(meta["shape"]))
                return cls(m, z["body_index"], tuple(meta["grid"]), z["beam"], z["x_mm"], z["y_mm"],
                           tuple(meta["gantry_angles"]), tuple(meta["isocentre"]), float(meta["bixel_mm"]))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(path, f"unreadable influence matrix cache ({e}); delete it to recompute") from None


def patient_origin(patient, ref=None) -> tuple[float, float, float]:
    """Patient (x, y, z) mm of voxel [0, 0, 0]: the DICOM CT's (`ref`, a CtReference) or, for a patient
    without one, the grid centred on (0, 0, 0) as `CtReference.new` places it."""
    if ref is not None:
        return tuple(float(v) for v in ref.origin)
    dy, dx, dz = patient.spacing
    ny, nx, nz = patient.grid
    return (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, (nz - 1) * dz / 2)


def _to_pyradplan(a: np.ndarray) -> np.ndarray:
    """rtgen [i=y, j=x, k=z decreasing] -> pyRadPlan's numpy view of a SimpleITK image, [z increasing, y, x]."""
    return np.ascontiguousarray(np.asarray(a)[:, :, ::-1].transpose(2, 0, 1))


def cache_key(patient, beams: BeamSet, origin) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    for a in (patient.ct, patient.possible_dose_mask, *(patient.structures[s] for s in sorted(patient.structures))):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([sorted(patient.structures), list(map(float, patient.spacing)), list(origin), asdict(beams),
                         version("pyradplan"), CACHE_FORMAT]).encode())
    return h.hexdigest()[:16]


def check_plannable(patient) -> None:
    """One clear line for a patient that cannot be planned: no CT, no body, no target."""
    if patient.ct is None:
        raise DataError(patient.id, "patient has no CT: the dose engine needs its densities")
    if not patient.possible_dose_mask.any():
        raise DataError(patient.id, "the possible dose mask (body) is empty: no voxel to compute dose in")
    if not any(t in patient.structures for t in TARGETS):
        raise DataError(patient.id, f"patient has no target ({', '.join(TARGETS)}): nothing to plan for")


def influence_matrix(patient, beams: BeamSet, origin, cache_dir: Path | None = None,
                     progress: Callable[[int, int], None] | None = None) -> tuple[Influence, bool]:
    """(the influence matrix of `beams` on `patient`, True when it was read from `cache_dir`)."""
    check_plannable(patient)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{patient.id}_{cache_key(patient, beams, origin)}.npz"
        if path.is_file():
            return Influence.load(path), True
    inf = compute_influence(patient, beams, origin, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        inf.save(path)
    return inf, False


def compute_influence(patient, beams: BeamSet, origin, progress: Callable[[int, int], None] | None = None
                      ) -> Influence:
    import time

    import scipy.sparse as sp

    prp = require_pyradplan()
    import SimpleITK as sitk
    from pyRadPlan.cst import StructureSet, create_voi
    from pyRadPlan.ct import create_ct
    from pyRadPlan.dose.engines import get_engine

    check_plannable(patient)
    dy, dx, dz = (float(s) for s in patient.spacing)
    ny, nx, nz = patient.grid
    x0, y0, z0 = origin
    ct_img = _to_pyradplan(np.asarray(patient.ct, np.float64))
    ct = create_ct({"cube_hu": ct_img, "origin": (x0, y0, z0 - (nz - 1) * dz), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
                    "resolution": {"x": dx, "y": dy, "z": dz}})

    def voi(name: str, kind: str, mask: np.ndarray):
        img = sitk.GetImageFromArray(_to_pyradplan(mask).astype(np.uint8))
        img.CopyInformation(ct.cube_hu)
        return create_voi(name=name, voi_type=kind, mask=img, ct_image=ct)

    vois = [voi(t, "TARGET", patient.structures[t]) for t in TARGETS if t in patient.structures]
    vois += [voi(o, "OAR", patient.structures[o]) for o in OARS if o in patient.structures]
    vois.append(voi("BODY", "EXTERNAL", patient.possible_dose_mask))
    cst = StructureSet(vois=vois, ct_image=ct)
    # rows: pyRadPlan flat index ((kk * ny + i) * nx + j) with kk = nz - 1 - k, for the body voxels in rtgen order
    body_index = np.flatnonzero(patient.possible_dose_mask.ravel())
    i, j, k = np.unravel_index(body_index, patient.grid)
    rows = ((nz - 1 - k) * ny + i) * nx + j
    # one beam at a time: pyRadPlan's matrix over the whole grid (12 bytes a value, and its buffers while it
    # is built) is then a ninth of the plan's, and only the body rows of each beam are kept
    parts, beam, x_mm, y_mm, angles, iso = [], [], [], [], [], None
    t = time.perf_counter()
    for b_i, angle in enumerate(beams.gantry_angles):
        pln = prp.PhotonPlan(machine="Generic")
        stf_props = {"gantry_angles": [float(angle)], "couch_angles": [0.0], "bixel_width": float(beams.bixel_mm)}
        if beams.isocentre is not None:
            stf_props["iso_center"] = [list(map(float, beams.isocentre))]
        pln.prop_stf = stf_props
        pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": dx, "y": dy, "z": dz}}}  # the CT grid itself
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            dij, stf = _run_engine(get_engine, ct, cst, pln)
        if dij is None:
            parts.append(sp.csc_array((rows.size, 0), dtype=np.float32))
        elif tuple(dij.dose_grid.dimensions) != (nx, ny, nz):
            raise PlanningError(f"{patient.id}: the dose grid {tuple(dij.dose_grid.dimensions)} is not the CT's")
        else:
            parts.append(_body_rows(dij.physical_dose.flat[0], rows))
        del dij
        [b] = stf.beams
        for ray in b.rays:
            for _ in range(len(ray.beamlets)):
                beam.append(b_i)
                x_mm.append(float(ray.ray_pos_bev[0]))
                y_mm.append(float(ray.ray_pos_bev[2]))
        angles.append(float(b.gantry_angle))
        iso = iso or tuple(float(v) for v in np.asarray(b.iso_center, float).ravel()[:3])
        if progress is not None:
            progress(b_i + 1, len(beams.gantry_angles))
    seconds = time.perf_counter() - t
    if sum(p.shape[1] for p in parts) == 0:
        raise PlanningError(f"{patient.id}: no beamlet reaches the targets")
    m = sp.hstack(parts, format="csc")  # keeps float32 values and int32 indices
    del parts
    if len(beam) != m.shape[1]:
        raise PlanningError(f"{patient.id}: {m.shape[1]} influence columns for {len(beam)} beamlets")
    return Influence(m, body_index.astype(np.int64), tuple(patient.grid), np.asarray(beam, np.int32),
                     np.asarray(x_mm), np.asarray(y_mm), tuple(angles), iso,
                     float(beams.bixel_mm), {"influence_s": seconds})


def _body_rows(d, rows: np.ndarray):
    """The rows `rows` of pyRadPlan's csc influence matrix `d`, in that order, as a csc float32 matrix with
    int32 indices: each stored value's row is relabelled in place of a row selection, which would copy
    the whole matrix twice (about 4 GB for a large head-and-neck plan at 7 mm)."""
    import scipy.sparse as sp

    d = d if d.format == "csc" else sp.csc_array(d)
    label = np.full(d.shape[0], -1, np.int32)  # pyRadPlan row -> body row
    label[rows] = np.arange(rows.size, dtype=np.int32)
    new = label[d.indices]
    keep = new >= 0
    counts = np.fromiter((np.count_nonzero(keep[a:b]) for a, b in zip(d.indptr[:-1], d.indptr[1:])), np.int64,
                         d.shape[1])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    if indptr[-1] < 2**31:  # int32 indices: 8 bytes a value instead of 12, and faster products
        indptr = indptr.astype(np.int32)
    m = sp.csc_array((d.data[keep].astype(np.float32, copy=False), new[keep], indptr), shape=(rows.size, d.shape[1]))
    del new, keep
    m.sort_indices()
    return m


def _run_engine(get_engine, ct, cst, pln):
    """pyRadPlan's beamlet geometry and influence matrix, its own progress bars off (rtgen reports per beam)."""
    from pyRadPlan.stf import get_generator, validate_stf

    generator = get_generator(pln)
    generator.console_progress = False
    stf = validate_stf(generator.generate(ct, cst))
    if sum(b.total_number_of_bixels for b in stf.beams) == 0:  # a beam that misses the targets: no matrix
        return None, stf
    engine = get_engine(pln)
    engine.console_progress = False
    return engine.calc_dose_influence(ct, cst, stf), stf


def blas_threads_note() -> str | None:
    """A note when BLAS may run several threads: each beamlet's small products then run 20-30x slower."""
    if os.environ.get("OPENBLAS_NUM_THREADS") == "1" or os.environ.get("OMP_NUM_THREADS") == "1":
        return None
    return "set OPENBLAS_NUM_THREADS=1 (and OMP_NUM_THREADS=1): the dose engine is far faster single-threaded"
