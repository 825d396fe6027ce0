"""RTPLAN writing: a step-and-shoot photon plan (beams, control points, MLC positions, monitor units)
on a CT's frame of reference, as `rtgen plan` makes it.

Each beam is coplanar (couch 0, collimator 0), isocentric, for a head-first supine patient, with
asymmetric jaws (ASYMX, ASYMY) set to the bounding box of its segments and a generic MLCX whose leaf
pair boundaries are given per beam. Step-and-shoot is written the usual way: segment s is a pair of
control points with the same leaf positions, the cumulative meterset weight rising over the pair
by the segment's share of the beam's monitor units (BeamType DYNAMIC, as planning systems write
step-and-shoot, since the leaves move between segments). Positions are mm in the IEC beam-limiting
device system at the isocentre; the isocentre is in patient coordinates (LPS mm).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.tags import RT_PLAN_STORAGE, RT_STRUCTURE_SET_STORAGE
from rtgen.data.sources.dicom.write import _base_dataset, _ds, _save


@dataclass
class PlanBeam:
    """One beam: `leaf_edges` (n_pairs + 1 mm, increasing, IEC Y), per segment the left and right leaf
    tips (n_pairs each, mm, IEC X) and its monitor units per fraction."""

    gantry_angle: float
    leaf_edges: np.ndarray
    left: Sequence[np.ndarray]
    right: Sequence[np.ndarray]
    mu: Sequence[float]


def write_rtplan(path: str | Path, ref: CtReference, beams: Sequence[PlanBeam], isocentre: Sequence[float],
                 fractions: int, label: str = "rtgen plan", energy_mv: float = 6.0, sad_mm: float = 1000.0,
                 machine: str = "Generic", prescriptions: dict[str, float] | None = None) -> str:
    """Write the plan to `path`; returns its SOPInstanceUID (for an RTDOSE to reference)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    path = Path(path)
    kept = [b for b in beams if len(b.mu) and sum(b.mu) > 0]
    if not kept:
        raise DataError(path, "the plan has no beam with monitor units: nothing to write")
    uid = generate_uid()
    ds = _base_dataset(ref, RT_PLAN_STORAGE, uid, "RTPLAN", generate_uid(), 4, label, content_date=False)
    now = _dt.datetime.now()
    ds.InstanceNumber = 1
    ds.RTPlanLabel = label[:16]
    ds.RTPlanName = label[:64]
    ds.RTPlanDate, ds.RTPlanTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.PlanIntent = "CURATIVE"
    if ref.structure_set_uid:
        ds.RTPlanGeometry = "PATIENT"
        ss = Dataset()
        ss.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ss.ReferencedSOPInstanceUID = ref.structure_set_uid
        ds.ReferencedStructureSetSequence = [ss]
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    ds.Manufacturer = "rtgen"
    if prescriptions:  # RT Prescription module: the targets' dose levels
        refs = []
        for n, (name, gy) in enumerate(sorted(prescriptions.items(), key=lambda kv: -kv[1]), start=1):
            r = Dataset()
            r.DoseReferenceNumber = n
            r.DoseReferenceUID = generate_uid()
            r.DoseReferenceStructureType = "SITE"
            r.DoseReferenceDescription = name[:64]
            r.DoseReferenceType = "TARGET"
            r.TargetPrescriptionDose = _ds(gy)
            refs.append(r)
        ds.DoseReferenceSequence = refs
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    setup.SetupTechnique = "ISOCENTRIC"
    ds.PatientSetupSequence = [setup]

    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = int(fractions)
    group.NumberOfBeams = len(kept)
    group.NumberOfBrachyApplicationSetups = 0
    group.ReferencedBeamSequence = []
    ds.BeamSequence = []
    iso = [_ds(v) for v in isocentre]
    for number, b in enumerate(kept, start=1):
        ref_beam = Dataset()
        ref_beam.ReferencedBeamNumber = number
        ref_beam.BeamMeterset = _ds(round(float(sum(b.mu)), 4))
        group.ReferencedBeamSequence.append(ref_beam)
        ds.BeamSequence.append(_beam(number, b, iso, energy_mv, sad_mm, machine))
    ds.FractionGroupSequence = [group]
    ds.ApprovalStatus = "UNAPPROVED"
    _save(ds, path)
    return uid


def _device(kind: str, pairs: int, boundaries=None):
    from pydicom.dataset import Dataset

    d = Dataset()
    d.RTBeamLimitingDeviceType = kind
    d.NumberOfLeafJawPairs = pairs
    if boundaries is not None:
        d.LeafPositionBoundaries = [_ds(v) for v in boundaries]
    return d


def _position(kind: str, values):
    from pydicom.dataset import Dataset

    p = Dataset()
    p.RTBeamLimitingDeviceType = kind
    p.LeafJawPositions = [_ds(v) for v in values]
    return p


def _beam(number: int, b: PlanBeam, iso, energy_mv: float, sad_mm: float, machine: str):
    from pydicom.dataset import Dataset

    edges = np.asarray(b.leaf_edges, float)
    n = len(edges) - 1
    mu = np.asarray(b.mu, float)
    keep = mu > 0
    lefts = [np.asarray(a, float) for a, k in zip(b.left, keep) if k]
    rights = [np.asarray(a, float) for a, k in zip(b.right, keep) if k]
    mu = mu[keep]
    open_rows = np.zeros(n, bool)
    for lf, rt in zip(lefts, rights):
        open_rows |= rt > lf
    rows = np.flatnonzero(open_rows)
    x1 = min(float(lf[rt > lf].min()) for lf, rt in zip(lefts, rights) if (rt > lf).any())
    x2 = max(float(rt[rt > lf].max()) for lf, rt in zip(lefts, rights) if (rt > lf).any())
    y1, y2 = float(edges[rows[0]]), float(edges[rows[-1] + 1])
    beam = Dataset()
    beam.BeamNumber = number
    beam.BeamName = f"G{b.gantry_angle:g}"[:64]
    beam.BeamType = "DYNAMIC"
    beam.RadiationType = "PHOTON"
    beam.TreatmentMachineName = machine
    beam.PrimaryDosimeterUnit = "MU"
    beam.SourceAxisDistance = _ds(sad_mm)
    beam.BeamLimitingDeviceSequence = [_device("ASYMX", 1), _device("ASYMY", 1), _device("MLCX", n, edges)]
    beam.ReferencedPatientSetupNumber = 1
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.NumberOfWedges = beam.NumberOfCompensators = beam.NumberOfBoli = beam.NumberOfBlocks = 0
    cumulative = np.concatenate(([0.0], np.cumsum(mu) / mu.sum()))
    cps = []
    for s, (lf, rt) in enumerate(zip(lefts, rights)):
        for half in (0, 1):
            cp = Dataset()
            cp.ControlPointIndex = len(cps)
            cp.CumulativeMetersetWeight = _ds(round(float(cumulative[s + half]), 8))
            if not cps:  # the first control point holds every machine setting
                cp.NominalBeamEnergy = _ds(energy_mv)
                cp.BeamLimitingDevicePositionSequence = [_position("ASYMX", (x1, x2)), _position("ASYMY", (y1, y2)),
                                                         _position("MLCX", (*lf, *rt))]
                cp.GantryAngle = _ds(b.gantry_angle % 360)
                cp.GantryRotationDirection = "NONE"
                cp.BeamLimitingDeviceAngle = 0
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = 0
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopEccentricAngle = 0
                cp.TableTopEccentricRotationDirection = "NONE"
                cp.TableTopVerticalPosition = cp.TableTopLongitudinalPosition = cp.TableTopLateralPosition = ""
                cp.IsocenterPosition = iso
            else:
                cp.BeamLimitingDevicePositionSequence = [_position("MLCX", (*lf, *rt))]
            cps.append(cp)
    beam.NumberOfControlPoints = len(cps)
    beam.FinalCumulativeMetersetWeight = _ds(1.0)
    beam.ControlPointSequence = cps
    return beam
