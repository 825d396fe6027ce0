"""Beam-geometry features for dose models: how coplanar beams aimed at the PTVs would carry dose.

Blurred PTV masks and distance maps (features.py) cannot say why a voxel far from every PTV gets
dose: it gets it because it lies on a beam's path to a target, at some depth below the skin. These
features model that with a crude, fast forward projection, computed per patient in about a second:

- for each gantry angle (a rotation about the last, axial, array axis) the PTVs are projected along
  parallel in-plane rays (a parallel-beam approximation: no divergence, no inverse-square) into a
  beam's-eye-view aperture, weighted by prescription;
- along the same rays, the radiological depth (ray-sum of relative electron density from the body
  surface, mm water-equivalent) and the geometric depth below the body surface;
- a dose proxy per beam: the aperture blurred by a lateral Gaussian (penumbra) times
  exp(-mu * radiological depth), summed over the beams;
- the overlap of each OAR with a margin around the PTVs, which says how hard the OAR is to spare.

Angles are in the array frame, not IEC 61217: at gantry angle a the rays travel along
(cos a, sin a) in (axis 0, axis 1) index coordinates, so 0 deg enters at index 0 of axis 0 (the
anterior side in OpenKBP) and 90 deg at index 0 of axis 1. The body is the possible-dose mask (in
OpenKBP the CT outside it holds immobilisation devices, not patient), or CT > -500 HU if that mask
is empty. Every feature is zero outside the body. All volumes are float32 on the patient's grid.

Rotations are in-plane only, so in-plane spacing must be isotropic (OpenKBP: 3.906 mm in both).
Work is cropped to the body's bounding box: the beam frame is a square that holds the rotated box.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import ndimage

from rtgen.core.atomic import atomic_path
from rtgen.core.structures import OARS, PRESCRIPTION_GY, TARGETS
from rtgen.data.records import Patient

try:  # numba is a dependency; the NumPy path below gives the same numbers, slower
    import numba

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    HAVE_NUMBA = False

REFERENCE_PRESCRIPTION_GY = 70.0
CACHE_FORMAT = "rtgen-geometry-features-1"
"""Bump when the features change meaning, so old caches are recomputed rather than trusted."""


@dataclass(frozen=True)
class GeometryConfig:
    # coplanar gantry angles: 9 equispaced beams, a typical head-and-neck IMRT class solution
    angles_deg: tuple[float, ...] = (0, 40, 80, 120, 160, 200, 240, 280, 320)
    # narrow-beam attenuation of 6 MV photons in water is about 0.05 / cm
    mu_per_mm: Annotated[float, Field(ge=0, le=0.1)] = 0.005
    # lateral fall-off of a field edge; plan-level IMRT edges are blurrier than a single field's
    penumbra_sigma_mm: Annotated[float, Field(ge=0, le=50)] = 5.0
    # OAR voxels within these distances of any PTV count as overlapping it
    oar_margins_mm: tuple[Annotated[float, Field(gt=0, le=100)], ...] = (5.0, 10.0)
    # relative electron density = clip(1 + HU / 1000, 0, max_density): air 0, water 1, bone up to max
    max_density: Annotated[float, Field(gt=0, le=10)] = 3.0
    # only used where the possible-dose mask is empty
    body_hu_threshold: Annotated[float, Field(ge=-1000, le=1000)] = -500.0
    # one aperture, radiological depth and surface depth volume per angle (27 volumes for 9 beams)
    per_angle: bool = True

    def __post_init__(self):
        if not self.angles_deg:
            raise ValueError("angles_deg must hold at least one gantry angle")
        if not all(math.isfinite(a) for a in self.angles_deg):
            raise ValueError(f"angles_deg must be finite, got {self.angles_deg}")
        tags = [_angle_tag(a) for a in self.angles_deg]
        if len(set(tags)) != len(tags):
            raise ValueError(f"angles_deg has repeated angles (mod 360): {self.angles_deg}")

    @property
    def feature_names(self) -> list[str]:
        """The keys of `geometry_features`, in a fixed order that does not depend on the patient."""
        names = []
        if self.per_angle:
            for a in self.angles_deg:
                t = _angle_tag(a)
                names += [f"aperture_{t}", f"raddepth_{t}", f"surface_depth_{t}"]
        names += ["beam_dose_proxy", *(f"beam_dose_proxy_{t}" for t in TARGETS), "beam_count",
                  "raddepth_mean", "raddepth_infield_mean", "surface_depth_min"]
        names += [f"oar_ptv_overlap_{m:g}mm" for m in self.oar_margins_mm]
        return names

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GeometryConfig:
        d = dict(d)
        for k in ("angles_deg", "oar_margins_mm"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


def _angle_tag(a: float) -> str:
    """'g040' for 40 deg, 'g022p5' for 22.5 deg: names that survive npz keys and CSV headers."""
    a = float(a) % 360.0
    whole = int(a)
    frac = f"{a:.4f}".rstrip("0").split(".")[1]
    return f"g{whole:03d}" + (f"p{frac}" if frac else "")


# ---------------------------------------------------------------------------------------------
# bilinear in-plane resampling of stacked volumes (all slices at once)
# ---------------------------------------------------------------------------------------------

def _sample_plane_numpy(src: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """out[c, i, j, :] = bilinear sample of src[c] at in-plane point (p0[i, j], p1[i, j]); 0 outside."""
    C, A, B, Z = src.shape
    out = np.zeros((C, *p0.shape, Z), np.float32)
    i0 = np.floor(p0).astype(np.int64)
    j0 = np.floor(p1).astype(np.int64)
    fi = (p0 - i0).astype(np.float32)
    fj = (p1 - j0).astype(np.float32)
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            a, b = i0 + di, j0 + dj
            w = wi * wj * ((a >= 0) & (a < A) & (b >= 0) & (b < B))
            vals = src[:, np.clip(a, 0, A - 1), np.clip(b, 0, B - 1), :]
            out += w[None, :, :, None] * vals
    return out


if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _sample_plane_numba(src, p0, p1):  # pragma: no cover - compiled; checked against the NumPy path
        C, A, B, Z = src.shape
        P, Q = p0.shape
        out = np.zeros((C, P, Q, Z), np.float32)
        for i in range(P):
            for j in range(Q):
                x = p0[i, j]
                y = p1[i, j]
                i0 = int(math.floor(x))
                j0 = int(math.floor(y))
                fi = np.float32(x - i0)
                fj = np.float32(y - j0)
                for di in range(2):
                    a = i0 + di
                    if a < 0 or a >= A:
                        continue
                    wi = fi if di == 1 else np.float32(1.0) - fi
                    for dj in range(2):
                        b = j0 + dj
                        if b < 0 or b >= B:
                            continue
                        w = wi * (fj if dj == 1 else np.float32(1.0) - fj)
                        if w == 0:
                            continue
                        for c in range(C):
                            for k in range(Z):
                                out[c, i, j, k] += w * src[c, a, b, k]
        return out


def sample_plane(src: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Bilinear in-plane sampling of a (C, A, B, Z) stack at float index points; zero outside."""
    src = np.ascontiguousarray(src, np.float32)
    p0, p1 = _snap(np.asarray(p0, np.float64)), _snap(np.asarray(p1, np.float64))
    if HAVE_NUMBA:
        return _sample_plane_numba(src, p0, p1)
    return _sample_plane_numpy(src, p0, p1)  # pragma: no cover


def _snap(p: np.ndarray) -> np.ndarray:
    """Round coordinates within 1e-6 of an integer, so 0/90/180/270 deg are exact permutations
    (cos 90 deg is 6e-17, not 0)."""
    r = np.round(p)
    return np.where(np.abs(p - r) < 1e-6, r, p)


# ---------------------------------------------------------------------------------------------
# the features
# ---------------------------------------------------------------------------------------------

def body_mask(patient: Patient, config: GeometryConfig = GeometryConfig()) -> np.ndarray:
    """The possible-dose mask, or CT above `body_hu_threshold` where that mask is empty."""
    pdm = np.asarray(patient.possible_dose_mask, bool)
    if pdm.any() or patient.ct is None:
        return pdm
    return np.asarray(patient.ct) > config.body_hu_threshold


def relative_density(ct_hu: np.ndarray | None, body: np.ndarray, max_density: float = 3.0) -> np.ndarray:
    """Relative electron density from HU (piecewise linear through air 0, water 1, 1000 HU = 2),
    water where there is no CT, zero outside the body so rays accumulate nothing before the skin."""
    if ct_hu is None:
        return body.astype(np.float32)
    rho = np.clip(1.0 + np.asarray(ct_hu, np.float32) / np.float32(1000.0), 0.0, max_density).astype(np.float32)
    rho[~body] = 0.0
    return rho


def _target_levels(patient: Patient, shape) -> list[np.ndarray]:
    zeros = np.zeros(shape, bool)
    return [np.asarray(patient.structures.get(t, zeros), bool) for t in TARGETS]


def geometry_features(patient: Patient, config: GeometryConfig = GeometryConfig()) -> dict[str, np.ndarray]:
    """name -> float32 volume on patient.grid, keys in `config.feature_names` order.

    Per angle (when `config.per_angle`), with tag g040 for 40 deg:
      aperture_gNNN       max prescription / 70 of the PTV voxels on the voxel's ray (the whole ray,
                          upstream and downstream: the beam's-eye-view projection); soft at edges
      raddepth_gNNN       mm water-equivalent from the body surface to the voxel centre
      surface_depth_gNNN  mm along the ray from the body surface to the voxel centre
    Summaries:
      beam_dose_proxy           sum over beams of (Gaussian-blurred prescription aperture) *
                                exp(-mu * raddepth), normalised to mean 1 inside the highest PTV
      beam_dose_proxy_PTVnn     the same from that PTV's own aperture alone, normalised to mean 1
                                inside that PTV, times prescription / 70 (zero if the PTV is absent)
      beam_count                number of beams whose (unblurred) field holds the voxel
      raddepth_mean             mean radiological depth over all beams
      raddepth_infield_mean     mean radiological depth over the beams whose field holds the voxel
      surface_depth_min         shortest distance to the skin along any beam
      oar_ptv_overlap_Mmm       in each OAR's voxels: the fraction of that OAR within M mm of any PTV
                                (max where OARs overlap); zero outside OARs
    """
    body = body_mask(patient, config)
    shape = body.shape
    spacing = tuple(float(s) for s in patient.spacing)
    if len(shape) != 3:
        raise ValueError(f"patient {patient.id}: geometry features need a 3D grid, got {shape}")
    if not math.isclose(spacing[0], spacing[1], rel_tol=1e-3):
        raise ValueError(f"patient {patient.id}: in-plane spacing {spacing[:2]} is not isotropic; "
                         "resample before computing beam geometry")
    out = {name: np.zeros(shape, np.float32) for name in config.feature_names}
    if not body.any():
        return out
    levels = _target_levels(patient, shape)
    _beam_features(patient, body, levels, spacing, config, out)
    for m in config.oar_margins_mm:
        out[f"oar_ptv_overlap_{m:g}mm"] = oar_ptv_overlap(patient.structures, np.logical_or.reduce(levels),
                                                          spacing, m) * body
    return out


def _beam_features(patient, body, levels, spacing, config, out):
    step, dz = spacing[0], spacing[2]
    nz = np.flatnonzero(body.any(axis=(0, 1)))
    z = slice(nz[0], nz[-1] + 1)
    inplane = body.any(axis=2)
    rows, cols = np.flatnonzero(inplane.any(1)), np.flatnonzero(inplane.any(0))
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    box = (r, c, z)
    body_b = body[box]

    # the beam frame: a D x D square (D odd) centred on an integer voxel near the box centre, big
    # enough for the box at any angle; frame axis 0 runs along the ray, axis 1 across it
    centre = np.array([(rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2], np.float64)
    corners = np.array([[rows[0], cols[0]], [rows[0], cols[-1]], [rows[-1], cols[0]], [rows[-1], cols[-1]]])
    radius = np.sqrt(((corners - centre) ** 2).sum(1)).max()
    h = int(math.ceil(radius)) + 2
    D = 2 * h + 1
    u = np.arange(D, dtype=np.float64) - h
    uu, vv = np.meshgrid(u, u, indexing="ij")  # frame offsets from the centre (along, across)
    xr = np.arange(r.start, r.stop, dtype=np.float64) - centre[0]
    xc = np.arange(c.start, c.stop, dtype=np.float64) - centre[1]
    x0, x1 = np.meshgrid(xr, xc, indexing="ij")  # box voxel offsets from the centre

    rho = relative_density(None if patient.ct is None else patient.ct[:, :, z], body[:, :, z], config.max_density)
    stack = np.stack([rho, body[:, :, z], *(lv[:, :, z] for lv in levels)]).astype(np.float32)
    weights = np.array([PRESCRIPTION_GY[t] / REFERENCE_PRESCRIPTION_GY for t in TARGETS], np.float32)
    sigma = (config.penumbra_sigma_mm / step, config.penumbra_sigma_mm / dz)
    have = [lv.any() for lv in levels]

    bshape = body_b.shape
    proxy = np.zeros(bshape, np.float32)
    proxy_lv = np.zeros((len(levels), *bshape), np.float32)
    count = np.zeros(bshape, np.float32)
    rad_sum = np.zeros(bshape, np.float32)
    rad_in = np.zeros(bshape, np.float32)
    surf_min = np.full(bshape, np.inf, np.float32)
    for a in config.angles_deg:
        t = math.radians(a)
        d = np.array([math.cos(t), math.sin(t)])
        n = np.array([-math.sin(t), math.cos(t)])
        # frame -> grid: sample the patient at centre + u d + v n
        frame = sample_plane(stack, centre[0] + uu * d[0] + vv * n[0], centre[1] + uu * d[1] + vv * n[1])
        rho_f, body_f, masks_f = frame[0], frame[1] > 0.5, frame[2:]
        rad_f = (np.cumsum(rho_f, axis=0) - 0.5 * rho_f) * np.float32(step)
        entered = np.maximum.accumulate(body_f, axis=0).astype(np.float32)
        surf_f = (np.cumsum(entered, axis=0) - 0.5 * entered) * np.float32(step)
        ap_lv = masks_f.max(axis=1)  # (levels, D across, Z): soft beam's-eye-view projection per PTV
        ap_w = (ap_lv * weights[:, None, None]).max(axis=0)
        blur = [ndimage.gaussian_filter(x, sigma, mode="constant") for x in (ap_w, *ap_lv)]
        # grid -> frame: along = (x - centre) . d, across = (x - centre) . n
        along = h + x0 * d[0] + x1 * d[1]
        across = h + x0 * n[0] + x1 * n[1]
        depth = sample_plane(np.stack([rad_f, surf_f]), along, across) * body_b
        aps = sample_plane(np.stack([ap_w, ap_lv.max(axis=0), *blur])[:, None], np.zeros_like(across), across)
        aps *= body_b
        att = np.exp(-np.float32(config.mu_per_mm) * depth[0])
        proxy += aps[2] * att
        proxy_lv += aps[3:] * att
        infield = aps[1]
        count += infield
        rad_sum += depth[0]
        rad_in += infield * depth[0]
        np.minimum(surf_min, np.where(body_b, depth[1], np.inf), out=surf_min)
        if config.per_angle:
            tag = _angle_tag(a)
            out[f"aperture_{tag}"][box] = aps[0]
            out[f"raddepth_{tag}"][box] = depth[0]
            out[f"surface_depth_{tag}"][box] = depth[1]

    top = next((i for i in reversed(range(len(levels))) if have[i]), None)
    if top is not None:
        out["beam_dose_proxy"][box] = proxy / _mean_in(proxy, levels[top][box])
    for i, name in enumerate(TARGETS):
        if have[i]:
            out[f"beam_dose_proxy_{name}"][box] = proxy_lv[i] / _mean_in(proxy_lv[i], levels[i][box]) * weights[i]
    out["beam_count"][box] = count
    out["raddepth_mean"][box] = rad_sum / len(config.angles_deg)
    out["raddepth_infield_mean"][box] = np.divide(rad_in, count, out=np.zeros_like(rad_in), where=count > 1e-3)
    out["surface_depth_min"][box] = np.where(body_b, surf_min, 0.0)


def _mean_in(x: np.ndarray, mask: np.ndarray) -> np.float32:
    m = float(x[mask].mean()) if mask.any() else 0.0
    return np.float32(m if m > 1e-12 else 1.0)


def oar_ptv_overlap(structures: dict[str, np.ndarray], ptv: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """In each OAR's voxels, the fraction of that OAR lying within `margin_mm` of a PTV voxel
    (Euclidean, true spacing; PTV voxels themselves count as distance 0); max where OARs overlap.

    The distance map is cropped to the OARs' bounding box grown by the margin: a PTV voxel outside
    it is farther than the margin from every OAR voxel, so the crop is exact."""
    ptv = np.asarray(ptv, bool)
    out = np.zeros(ptv.shape, np.float32)
    oars = {n: np.asarray(structures[n], bool) for n in OARS if n in structures and np.any(structures[n])}
    if not oars or not ptv.any():
        return out
    union = np.logical_or.reduce(list(oars.values()))
    idx = np.argwhere(union)
    grow = np.ceil(margin_mm / np.asarray(spacing, np.float64)).astype(int) + 1
    lo = np.maximum(idx.min(0) - grow, 0)
    hi = np.minimum(idx.max(0) + grow + 1, ptv.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    if not ptv[box].any():
        return out
    dist = ndimage.distance_transform_edt(~ptv[box], sampling=spacing)
    near = dist <= margin_mm + 1e-6
    sub = out[box]
    for mask in oars.values():
        m = mask[box]
        frac = np.float32(near[m].mean())
        sub[m] = np.maximum(sub[m], frac)
    return out


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------

def cache_key(patient: Patient, config: GeometryConfig = GeometryConfig()) -> str:
    """sha1 of the cache format, the config and every array the features read (CT, masks, spacing)."""
    h = hashlib.sha1()
    h.update(CACHE_FORMAT.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps([list(patient.grid), [float(s) for s in patient.spacing]]).encode())
    h.update(b"ct:none" if patient.ct is None else b"ct:" + np.ascontiguousarray(patient.ct, np.int16).tobytes())
    h.update(b"pdm:" + np.ascontiguousarray(patient.possible_dose_mask, bool).tobytes())
    for name in sorted(patient.structures):
        h.update(f"structure:{name}:".encode() + np.ascontiguousarray(patient.structures[name], bool).tobytes())
    return h.hexdigest()


def cache_path(patient: Patient, config: GeometryConfig, cache_dir: str | Path) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", patient.id) or "patient"
    return Path(cache_dir) / f"{safe}.geometry-{cache_key(patient, config)[:20]}.npz"


def cached_geometry_features(patient: Patient, config: GeometryConfig = GeometryConfig(),
                             cache_dir: str | Path = ".") -> dict[str, np.ndarray]:
    """`geometry_features`, read from `cache_dir` when a valid cache exists, else computed and cached.

    One .npz per patient and config, keyed by a hash of both. Features are zero outside the body, so
    only body voxels are stored (about 7 MB for OpenKBP). A cache that cannot be read, or whose key,
    names or shapes disagree, is recomputed and rewritten: a cache never makes a run fail."""
    path = cache_path(patient, config, cache_dir)
    key = cache_key(patient, config)
    names = config.feature_names
    if path.exists():
        feats = _read_cache(path, key, names, tuple(patient.grid))
        if feats is not None:
            return feats
    feats = geometry_features(patient, config)
    _write_cache(path, key, feats, body_mask(patient, config))
    return feats


def _write_cache(path: Path, key: str, feats: dict[str, np.ndarray], support: np.ndarray) -> None:
    names = list(feats)
    values = np.stack([feats[n][support] for n in names]) if names else np.zeros((0, int(support.sum())), np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(CACHE_FORMAT), key=np.array(key), names=np.array(names),
                     shape=np.array(support.shape, np.int64), support=np.packbits(support.ravel()),
                     values=values.astype(np.float32))


def _read_cache(path: Path, key: str, names: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != CACHE_FORMAT or str(z["key"]) != key or list(z["names"]) != names:
                return None
            if tuple(int(v) for v in z["shape"]) != shape:
                return None
            n = int(np.prod(shape))
            support = np.unpackbits(z["support"], count=n).astype(bool).reshape(shape)
            values = z["values"]
            if values.dtype != np.float32 or values.shape != (len(names), int(support.sum())):
                return None
            if not np.isfinite(values).all():
                return None
    except Exception:  # numpy, zipfile and zlib raise many types for corrupt or truncated files
        return None
    feats = {}
    for name, v in zip(names, values):
        vol = np.zeros(shape, np.float32)
        vol[support] = v
        feats[name] = vol
    return feats
