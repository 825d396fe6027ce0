"""The DICOM objects rtgen writes conform to the standard: dciodvfy (dicom3tools) reports no error on
the CT series, the RTSTRUCT and the RTDOSE of a bundled patient converted to DICOM, nor on a
predicted RTDOSE written onto a DICOM folder (with and without an RTPLAN to reference); the RTDOSE's
RT DVH module holds every ROI's DVH, and dicompyler-core reads the same DVHs from it and from the
dose grid."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.data.records import Patient
from rtgen.data.sources.dicom import (
    RT_PLAN_STORAGE,
    read_ct_reference,
    read_dicom_patient,
    write_dicom_patient,
    write_rtdose,
)
from rtgen.dosimetry.dvh import dmean, dose_at_volume_percent, roi_dose

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian/Ubuntu: apt-get "
                                                              "install dicom3tools)")


def dciodvfy(path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy on one file."""
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    assert "Assertion" not in out.stderr, out.stderr  # dciodvfy gave up on the file
    return [s for s in lines if s.startswith("Error")], [s for s in lines if s.startswith("Warning")]


@pytest.fixture(scope="module")
def openkbp() -> Patient:
    return read_patient(example_patients_dir() / "pt_204")


@pytest.fixture(scope="module")
def written(tmp_path_factory, openkbp):
    """pt_204 as DICOM, with an empty structure added (its ROI has no contour)."""
    p = openkbp
    structures = {**p.structures, "Esophagus": np.zeros(p.grid, bool)}
    assert "Esophagus" not in p.structures
    patient = Patient(p.id, p.ct, p.dose, p.possible_dose_mask, structures, p.spacing)
    return write_dicom_patient(patient, tmp_path_factory.mktemp("conformance") / "pt_204")


@needs_dciodvfy
def test_every_written_object_passes_dciodvfy(written):
    cts = sorted((written / "CT").glob("*.dcm"))
    for path in (cts[0], cts[-1], written / "RTSTRUCT.dcm", written / "RTDOSE.dcm"):
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def _rtplan(folder, ref) -> str:
    """A minimal RTPLAN header on the CT's frame of reference (enough for the folder scan)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_PLAN_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RT_PLAN_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    ds.PatientID, ds.StudyInstanceUID = ref.patient_id, ref.study_uid
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), ref.frame_of_reference_uid
    ds.RTPlanLabel = "plan"
    ds.save_as(folder / "RTPLAN.dcm", enforce_file_format=True)
    return ds.SOPInstanceUID


@needs_dciodvfy
def test_a_predicted_rtdose_on_a_dicom_folder_passes_dciodvfy(tmp_path, written, openkbp):
    """As `rtgen predict --format dicom` writes it: the folder's RTSTRUCT gives the DVH module (every
    ROI, the empty one too); without an RTPLAN the summation type is PREDICTED, with one it is PLAN and
    the plan is referenced."""
    folder = tmp_path / "pt_204"
    shutil.copytree(written, folder)
    (folder / "RTDOSE.dcm").unlink()
    dose = openkbp.dose * 0.9
    path = write_rtdose(tmp_path / "pred.dcm", dose, folder)
    ds = pydicom.dcmread(path)
    rs = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    assert ds.DoseSummationType == "PREDICTED" and "ReferencedRTPlanSequence" not in ds
    assert ds.BitsAllocated == 16 and float(ds.DoseGridScaling) < 0.01
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    numbers = [int(r.ROINumber) for r in rs.StructureSetROISequence]
    assert [int(d.DVHReferencedROISequence[0].ReferencedROINumber) for d in ds.DVHSequence] == numbers
    errors, warnings = dciodvfy(path)
    assert not errors, errors
    assert any("PREDICTED" in w for w in warnings)  # the summation type of a dose without a plan
    plan_uid = _rtplan(folder, read_ct_reference(folder))
    ds = pydicom.dcmread(write_rtdose(tmp_path / "planned.dcm", dose, folder))
    assert ds.DoseSummationType == "PLAN"
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan_uid
    errors, warnings = dciodvfy(tmp_path / "planned.dcm")
    assert not errors and not any("Summation" in w for w in warnings), errors + warnings
    back = read_dicom_patient(folder)  # the RTPLAN is no obstacle to reading the folder
    assert back.structures.keys() == {*openkbp.structures, "Esophagus"} and not back.structures["Esophagus"].any()


def test_rtdose_dvh_module_and_dicompyler_core_agree_with_rtgen(written, openkbp, monkeypatch):
    """The DVHs in the RTDOSE (as dicompyler-core reads them) and dicompyler-core's own DVHs from the
    dose grid and the RTSTRUCT agree with rtgen's within 0.5 Gy."""
    import pydicom.dicomio

    # dicompyler-core 0.5.6 still imports pydicom.dicomio.read_file, which pydicom 3 removed
    monkeypatch.setattr(pydicom.dicomio, "read_file", pydicom.dcmread, raising=False)
    dicomparser = pytest.importorskip("dicompylercore.dicomparser")
    dvhcalc = pytest.importorskip("dicompylercore.dvhcalc")
    rs, rd = str(written / "RTSTRUCT.dcm"), str(written / "RTDOSE.dcm")
    rois = {v["name"]: k for k, v in dicomparser.DicomParser(rs).GetStructures().items()}
    stored = dicomparser.DicomParser(rd).GetDVHs()
    assert set(stored) == set(rois.values())
    assert stored[rois["Esophagus"]].volume == 0
    for name in ("PTV70", "PTV56", "SpinalCord", "RightParotid", "Larynx"):
        values = roi_dose(openkbp.dose, openkbp.structures[name])
        ours = {"mean": dmean(values), "D95": dose_at_volume_percent(values, 95),
                "D2": dose_at_volume_percent(values, 2)}
        for dvh in (stored[rois[name]], dvhcalc.get_dvh(rs, rd, rois[name])):
            assert dvh.volume == pytest.approx(openkbp.volume_cc(name), rel=0.01), name
            assert abs(dvh.mean - ours["mean"]) < 0.5, name
            assert abs(dvh.D95.value - ours["D95"]) < 0.5, name
            assert abs(dvh.D2.value - ours["D2"]) < 0.5, name


# ---------------------------------------------------------------- the dose grid


def _dvh_metrics(dose: np.ndarray, structures: dict, voxel_mm3: float) -> dict:
    """Every DVH point of the OpenKBP DVH score (OARs D0.1cc and Dmean, PTVs D99, D95, D1) and, for
    every structure, Dmean, D99, D95, D50 and D2."""
    from rtgen.dosimetry.openkbp_scores import dvh_metrics

    out = dvh_metrics(dose, structures, voxel_mm3)
    for name, mask in structures.items():
        values = roi_dose(dose, mask)
        out[("mean", name)] = dmean(values)
        out.update({(f"D_{v}", name): dose_at_volume_percent(values, v) for v in (99, 95, 50, 2)})
    return out


@pytest.mark.parametrize("patient", ["pt_204", "pt_219"])
def test_dose_grid_on_a_fine_ct_keeps_the_dvhs(tmp_path, openkbp, patient):
    """A bundled patient as a 1.95 mm CT (each pixel split in 2 x 2): the RTDOSE is on a 2.5 mm grid
    around the body and the ROIs, 10 mm wider, frames on the CT slices; read back onto the CT (as rtgen
    reads an RTDOSE: trilinear, as a planning system does) every DVH point of the OpenKBP DVH score
    and each structure's Dmean, D99, D95, D50 and D2 are those of the full grid within 0.5 Gy."""
    from scipy import ndimage

    from rtgen.data.sources.dicom import CtReference, dose_on_ct_grid, read_rtdose

    def up(a):
        return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)

    p = openkbp if patient == openkbp.id else read_patient(example_patients_dir() / patient)
    # a dose as rtgen predicts it on a fine CT: linearly interpolated from the model's grid, zero
    # outside the body, so that it halves within one voxel at the skin
    dose = np.maximum(ndimage.zoom(p.dose, (2, 2, 1), order=1), 0) * up(p.possible_dose_mask)
    body = up(p.possible_dose_mask)
    structures = {n: up(m) for n, m in p.structures.items()}
    ref = CtReference.new(dose.shape, (p.spacing[0] / 2, p.spacing[1] / 2, p.spacing[2]))
    path = write_rtdose(tmp_path / "rd.dcm", dose, ref, body=body)
    ds = pydicom.dcmread(path)
    assert [float(v) for v in ds.PixelSpacing] == [2.5, 2.5] and "DVHSequence" not in ds
    grid = read_rtdose(path)
    lo, hi = np.argwhere(body).min(axis=0), np.argwhere(body).max(axis=0)
    dy, dx, dz = ref.spacing
    ox, oy, _ = ref.origin
    assert grid.origin_xy == pytest.approx((ox + lo[1] * dx - 10, oy + lo[0] * dy - 10), abs=1e-3)
    assert grid.origin_xy[0] + (grid.values.shape[1] - 1) * 2.5 >= ox + hi[1] * dx + 10 - 1e-3
    assert grid.origin_xy[1] + (grid.values.shape[0] - 1) * 2.5 >= oy + hi[0] * dy + 10 - 1e-3
    kz = int(np.ceil(10 / dz))
    assert grid.z == pytest.approx(ref.slice_z()[lo[2] - kz:hi[2] + kz + 1])  # the CT's slices
    assert float(grid.values.max()) <= float(dose.max()) + 0.01  # no hot spot that the dose lacks
    back = dose_on_ct_grid(grid, ref)
    assert float(np.abs(back - dose)[body].mean()) < 0.1  # measured 0.044 Gy (pt_204), 0.034 Gy (pt_219)
    full = _dvh_metrics(dose, structures, float(np.prod(ref.spacing)))
    read = _dvh_metrics(back, structures, float(np.prod(ref.spacing)))
    errors = {f"{m} {n}": round(abs(read[m, n] - v), 3) for (m, n), v in full.items()}
    # measured: within 0.11 Gy (D99 of a PTV reaching the skin; D0.1cc within 0.08 Gy, the rest 0.04)
    assert max(errors.values()) < 0.5, errors


def test_dose_grid_edge_is_not_diluted(tmp_path):
    """A linear dose in a disc-shaped body, on a 2.5 mm grid from a 1.95 mm CT, read back onto the
    CT: within 0.05 Gy at the body's edge (zeros outside would take up to half of it), within 0.01 Gy
    inside (a half-voxel shift of the grid would be 0.2 Gy off)."""
    from scipy import ndimage

    from rtgen.data.sources.dicom import CtReference, dose_on_ct_grid, read_rtdose

    shape = (120, 100, 4)
    ref = CtReference.new(shape, (1.953, 1.953, 2.5))
    i, j, _ = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    body = (i - 60) ** 2 + (j - 50) ** 2 < 40 ** 2
    dose = np.where(body, 10 + 0.3 * i + 0.2 * j, 0).astype(np.float32)
    back = dose_on_ct_grid(read_rtdose(write_rtdose(tmp_path / "rd.dcm", dose, ref, body=body)), ref)
    depth = ndimage.distance_transform_edt(body[:, :, 0])[:, :, None] * np.ones(shape)
    err = np.abs(back - dose)
    assert float(err[body].max()) < 0.05 and float(err[depth > 3].max()) < 0.01  # measured 0.032, 0.003


def test_dose_grid_of_a_512_ct_is_small(tmp_path):
    """A 512 x 512 x 98 CT (0.98 mm pixels, 3 mm slices) with a 44 x 30 cm body: the RTDOSE on its
    grid would take 51 MB (16-bit; 103 MB at 32 bits); on the dose grid it takes under 15 MB."""
    from rtgen.data.sources.dicom import CtReference

    shape, spacing = (512, 512, 98), (0.977, 0.977, 3.0)
    ref = CtReference.new(shape, spacing)
    y = (np.arange(512) - 255.5) * spacing[0]
    yy, xx = np.meshgrid(y, y, indexing="ij")
    inside = (xx / 220) ** 2 + (yy / 150) ** 2 <= 1
    plane = np.where(inside, 60 * np.exp(-(xx ** 2 + yy ** 2) / 2e4), 0).astype(np.float32)
    dose = np.broadcast_to(plane[:, :, None], shape)
    path = write_rtdose(tmp_path / "rd.dcm", dose, ref)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    size = path.stat().st_size
    assert size < 15e6, size  # 4.7 MB
    assert (ds.Rows, ds.Columns, ds.NumberOfFrames) == (129, 185, 98)
    if DCIODVFY is not None:
        assert not dciodvfy(path)[0]
