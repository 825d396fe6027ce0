"""Reading real DICOM exports: compressed transfer syntaxes (pydicom's own compressed test files and
a CT series rtgen writes, re-encoded), the choice among several RTDOSEs, patient identity copied only
when valid and `--anonymize`, and `convert from-dicom` over a cohort."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import RtgenWarning
from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.data.records import Patient
from rtgen.data.sources.dicom import read_dicom_patient, read_rtdose, write_dicom_patient
from rtgen.data.sources.dicom.ct import read_pixels
from rtgen.data.sources.nifti import read_nifti_patient as read_patient_nifti
from rtgen.data.sources.nifti import write_nifti

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def openkbp() -> Patient:
    return read_patient(example_patients_dir() / "pt_204")


@pytest.fixture(scope="module")
def written(tmp_path_factory, openkbp):
    """pt_204 as DICOM, written once for the module (tests copy it before changing it)."""
    return write_dicom_patient(openkbp, tmp_path_factory.mktemp("reading") / "pt_204")


def copy_of(folder, tmp_path, name: str | None = None):
    return shutil.copytree(folder, tmp_path / (name or folder.name))


def quiet_read(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtgenWarning)
        return read_dicom_patient(folder, **kwargs)


# -- compressed transfer syntaxes ------------------------------------------------------------------

@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                        "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicom_compressed_files_decode_like_their_uncompressed_twin(compressed):
    """RLE, JPEG 2000 lossless and JPEG-LS lossless (pydicom's bundled MR_small variants) through rtgen's
    pixel reader, equal to the uncompressed MR_small.dcm."""
    _, plain = read_pixels(get_testdata_file("MR_small.dcm"))
    ds, arr = read_pixels(get_testdata_file(compressed))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(arr, plain)


def test_pydicom_jpeg_lossless_process_14():
    """JPEG lossless (process 14, selection value 1) equals the RLE lossless encoding of the same image."""
    _, jpeg = read_pixels(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    _, rle = read_pixels(get_testdata_file("SC_rgb_rle.dcm"))
    assert np.array_equal(jpeg, rle)


@pytest.mark.filterwarnings("ignore::rtgen.core.errors.RtgenWarning")  # its DoseUnits are RELATIVE
def test_pydicom_rle_rtdose_reads_like_the_uncompressed_one():
    plain, rle = read_rtdose(get_testdata_file("rtdose.dcm")), read_rtdose(get_testdata_file("rtdose_rle.dcm"))
    assert np.array_equal(rle.values, plain.values) and np.array_equal(rle.z, plain.z)


def test_pydicom_jpeg2000_ct_slice_decodes():
    """A lossy JPEG 2000 CT slice (693_J2KI.dcm, 14-bit signed): decoded to a 512 x 512 image in its range."""
    ds, arr = read_pixels(get_testdata_file("693_J2KI.dcm"))
    assert arr.shape == (512, 512) and arr.dtype == np.int16 and ds.BitsStored == 14
    assert -(2**13) <= arr.min() < arr.max() < 2**13 and arr.std() > 100


def test_a_written_series_recompressed_reads_as_the_same_patient(written, tmp_path, openkbp):
    """rtgen's CT series re-encoded slice by slice (RLE and JPEG 2000 lossless alternating, as a
    mixed export may be) and its RTDOSE in RLE: the same CT, masks and dose as the uncompressed one."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    folder = copy_of(written, tmp_path)
    for k, f in enumerate(sorted((folder / "CT").glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless if k % 2 else JPEG2000Lossless)
        ds.save_as(f)
    ds = pydicom.dcmread(folder / "RTDOSE.dcm")
    ds.compress(RLELossless)
    ds.save_as(folder / "RTDOSE.dcm")
    plain, q = quiet_read(written), quiet_read(folder)
    assert pydicom.dcmread(folder / "CT" / "CT_0001.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(q.ct, openkbp.ct) and np.array_equal(q.ct, plain.ct)
    assert np.array_equal(q.dose, plain.dose)
    assert all(np.array_equal(q.structures[n], plain.structures[n]) for n in plain.structures)


# -- several RTDOSEs -------------------------------------------------------------------------------

def tiny_patient(pid: str = "tiny", n: int = 6) -> Patient:
    """A 16 x 14 x n patient with a PTV70, a cord and a dose."""
    shape = (16, 14, n)
    ct = np.full(shape, -1000, np.int16)
    ct[2:14, 2:12] = 40
    ptv = np.zeros(shape, bool)
    ptv[5:10, 4:9, 1:5] = True
    cord = np.zeros(shape, bool)
    cord[11:13, 6:8] = True
    dose = np.where(ptv, 70.0, 20.0).astype(np.float32) * (ct > -500)
    return Patient(pid, ct, dose, ct > -500, {"PTV70": ptv, "SpinalCord": cord}, (2.0, 2.0, 3.0))


@pytest.fixture
def tiny_dir(tmp_path):
    return write_dicom_patient(tiny_patient(), tmp_path / "tiny", dose_spacing=None)


def add_dose(folder, name: str, summation: str, factor: float):
    """A copy of the folder's RTDOSE as `name`, with another DoseSummationType and its dose times `factor`."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(folder / "RTDOSE.dcm")
    ds.DoseSummationType = summation
    ds.DoseGridScaling = f"{float(ds.DoseGridScaling) * factor:.8e}"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / name)
    return folder / name


def test_the_plan_dose_is_chosen_before_beam_doses_and_said(tiny_dir):
    pydicom_ds = pydicom.dcmread(tiny_dir / "RTDOSE.dcm")
    pydicom_ds.DoseSummationType = "PLAN"
    pydicom_ds.save_as(tiny_dir / "RTDOSE.dcm")
    add_dose(tiny_dir, "RD_beam1.dcm", "BEAM", 0.5)
    add_dose(tiny_dir, "RD_fraction.dcm", "FRACTION", 1 / 35)
    with pytest.warns(RtgenWarning) as caught:
        p = read_dicom_patient(tiny_dir)
    assert p.dose.max() == pytest.approx(70, abs=0.01)
    notes = [str(w.message) for w in caught if type(w.message).__name__ == "RtgenNote"]
    assert len(notes) == 1 and "using the plan dose RTDOSE.dcm (PLAN)" in notes[0]
    assert "RD_beam1.dcm (BEAM)" in notes[0] and "RD_fraction.dcm (FRACTION)" in notes[0] and "--dose" in notes[0]
    beam = read_dicom_patient(tiny_dir, dose_file=tiny_dir / "RD_beam1.dcm")  # the choice is the user's
    assert beam.dose.max() == pytest.approx(35, abs=0.01)


def test_two_plan_doses_or_none_are_refused_and_point_to_dose(tiny_dir, tmp_path):
    from rtgen.core.errors import DataError

    add_dose(tiny_dir, "RD_beam.dcm", "BEAM", 0.5)  # IMPORTED and BEAM: no plan dose
    with pytest.raises(DataError, match=r"2 RTDOSEs and none is a plan dose .*RD_beam.dcm \(BEAM\).*--dose FILE"):
        quiet_read(tiny_dir)
    add_dose(tiny_dir, "RD_plan1.dcm", "PLAN", 1.0)
    add_dose(tiny_dir, "RD_plan2.dcm", "PLAN", 0.9)
    with pytest.raises(DataError, match=r"2 plan doses .*RD_plan1.dcm \(PLAN\), .*RD_plan2.dcm \(PLAN\); choose one "
                                        r"with --dose FILE") as e:
        quiet_read(tiny_dir)
    assert "RD_beam" not in str(e.value)
    assert quiet_read(tiny_dir, dose_file=tiny_dir / "RD_plan2.dcm").dose.max() == pytest.approx(63, abs=0.01)
    with pytest.raises(DataError, match="--dose: not an RTDOSE"):
        quiet_read(tiny_dir, dose_file=tiny_dir / "RTSTRUCT.dcm")
    outside = shutil.copy(tiny_dir / "RD_plan1.dcm", tmp_path / "elsewhere.dcm")
    with pytest.raises(DataError, match="--dose: not inside"):
        quiet_read(tiny_dir, dose_file=outside)


def test_dose_option_on_every_command_that_reads_a_reference(tmp_path):
    tiny_dir = write_dicom_patient(tiny_patient(), tmp_path / "split" / "tiny", dose_spacing=None)
    add_dose(tiny_dir, "RD_plan1.dcm", "PLAN", 1.0)
    add_dose(tiny_dir, "RD_plan2.dcm", "PLAN", 0.5)
    r = invoke("inspect", tiny_dir, "--out", tmp_path / "i", "--json")
    assert r.exit_code == 1 and "choose one with --dose FILE" in r.output
    r = invoke("inspect", tiny_dir, "--out", tmp_path / "i", "--json", "--dose", tiny_dir / "RD_plan2.dcm")
    assert r.exit_code == 0, r.output
    r = invoke("convert", "from-dicom", tiny_dir, tmp_path / "c", "--dose", tiny_dir / "RD_plan2.dcm")
    assert r.exit_code == 0 and "dose: RD_plan2.dcm (PLAN); not used: " in r.output, r.output
    assert read_patient_nifti(tmp_path / "c").dose.max() == pytest.approx(35, abs=0.01)
    pred = tmp_path / "pred"
    pred.mkdir()
    write_nifti(pred / "tiny.nii.gz", tiny_patient().dose * 0.5, tiny_patient().spacing)
    r = invoke("evaluate", "--pred", pred, "--ref", tmp_path / "split", "--dose", tiny_dir / "RD_plan2.dcm")
    assert r.exit_code == 0 and "dose score" in r.output, r.output
    r = invoke("report", "--pred", pred, "--ref", tiny_dir, "--out", tmp_path / "r.html", "--dose", tiny_dir / "nope.dcm")
    assert r.exit_code == 1 and "nope.dcm: --dose: not found" in r.output
    for bad in (tiny_dir / "RTSTRUCT.dcm", tmp_path / "pred" / "tiny.nii.gz"):
        r = invoke("report", "--pred", pred, "--ref", tiny_dir, "--out", tmp_path / "r.html", "--dose", bad)
        assert r.exit_code == 1 and "--dose: not" in r.output and "Traceback" not in r.output, r.output


# -- cohorts ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory, written):
    """Two bundled patients as DICOM, one folder each, and a third whose CT misses a slice."""
    root = tmp_path_factory.mktemp("cohort") / "export"
    shutil.copytree(written, root / "pt_204")
    write_dicom_patient(read_patient(example_patients_dir() / "pt_219"), root / "pt_219")
    write_dicom_patient(tiny_patient("pt_9"), root / "pt_9")
    (root / "pt_9" / "CT" / "CT_0003.dcm").unlink()
    return root


def test_a_cohort_goes_on_past_a_bad_patient_and_says_what_each_holds(cohort, tmp_path):
    r = invoke("convert", "from-dicom", cohort, tmp_path / "out", "--format", "npz")
    assert r.exit_code == 1, r.output
    assert "export: 3 patients" in r.output and "2 of 3 patients converted" in r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pt_204.npz", "pt_219.npz"]
    lines = r.output.splitlines()
    at = next(i for i, s in enumerate(lines) if s.startswith("pt_219:"))
    assert "Mandible <- 'Mandible'" in lines[at + 1] and "body <- 'External'" in lines[at + 1]
    assert lines[at + 1].endswith("not matched: none")
    assert lines[at + 2] == "  prescription: PTV56 56 Gy, PTV63 63 Gy, PTV70 70 Gy"
    assert lines[at + 3] == "  dose: RTDOSE.dcm (IMPORTED)"
    failed = r.output[r.output.index("1 failed"):]  # the failures, listed at the end
    assert "pt_9" in failed and "missing slice" in failed


def test_a_flat_export_is_sorted_into_patients_and_studies(tmp_path):
    """Every file of three cases in one folder: pt_a (no dose, an unmatched ROI), and pt_b with two
    planning CTs in two studies (a case each)."""
    flat = tmp_path / "flat"
    flat.mkdir()
    a = tiny_patient("pt_a")
    a = Patient(a.id, a.ct, None, a.possible_dose_mask, {"PTV70": a.structures["PTV70"]}, a.spacing)
    for p, tag in [(a, "a"), (tiny_patient("pt_b"), "b1"), (tiny_patient("pt_b", 5), "b2")]:
        d = write_dicom_patient(p, tmp_path / tag)
        if tag == "a":
            ds = pydicom.dcmread(d / "RTSTRUCT.dcm")
            ds.StructureSetROISequence[0].ROIName = "GTV"
            ds.save_as(d / "RTSTRUCT.dcm")
        for f in d.rglob("*.dcm"):
            shutil.copy(f, flat / f"{tag}_{f.name}")
    (flat / "README.txt").write_text("export notes\n")
    r = invoke("convert", "from-dicom", flat, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "flat: 3 patients" in r.output and "3 of 3 patients converted" in r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pt_a", "pt_b_study1", "pt_b_study2"]
    grids = sorted(read_patient_nifti(tmp_path / "out" / n).grid[2] for n in ("pt_b_study1", "pt_b_study2"))
    assert grids == [5, 6]
    lines = r.output.splitlines()
    at = next(i for i, s in enumerate(lines) if s.startswith("pt_a:"))
    assert lines[at + 1].endswith("not matched: 'GTV'")
    assert lines[at + 2] == "  prescription: none (no PTV recognised)" and lines[at + 3] == "  dose: none found"


# -- patient identity and --anonymize -------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # pydicom's, on writing the bad values
def test_invalid_identity_is_dropped_with_a_warning_never_written(tiny_dir, tmp_path):
    from rtgen.data.sources.dicom.identity import valid_da, valid_pn, valid_tm

    assert valid_da("19700101") and not valid_da("1970-01-01") and not valid_da("19700230")
    assert valid_tm("093015.25") and valid_tm("09") and not valid_tm("25") and not valid_tm("09:30")
    assert valid_pn("Doe^John") and valid_pn("") and not valid_pn("Doe\\John") and not valid_pn("x" * 65)
    for f in tiny_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "Doe^Jane", "Female", "1970-01-01"
        ds.save_as(f)
    with pytest.warns(RtgenWarning, match=r"CT_0001.dcm: invalid PatientBirthDate '1970-01-01', PatientSex "
                                          r"'Female': not copied"):
        read_dicom_patient(tiny_dir)
    from rtgen.data.sources.dicom import write_rtdose

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtgenWarning)
        path = write_rtdose(tmp_path / "RD.dcm", tiny_patient().dose, tiny_dir)
    ds = pydicom.dcmread(path)
    assert (str(ds.PatientName), ds.PatientSex, ds.PatientBirthDate) == ("Doe^Jane", "", "")  # valid ones are kept


def _identity(folder):
    files = [*sorted((folder / "CT").glob("*.dcm")), folder / "RTSTRUCT.dcm", folder / "RTDOSE.dcm"]
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def test_to_dicom_anonymize_writes_fresh_consistent_identifiers(tmp_path):
    src = tmp_path / "src"
    write_dicom_patient(tiny_patient("Doe_Jane_1970"), src)
    r = invoke("convert", "to-dicom", src, tmp_path / "anon", "--anonymize")
    assert r.exit_code == 0 and "anonymized as ANON-" in r.output, r.output
    dss = _identity(tmp_path / "anon")
    original = pydicom.dcmread(src / "RTSTRUCT.dcm")
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(key)) for ds in dss}
        assert len(values) == 1 and str(original.get(key)) not in values, key  # shared, and new
    assert str(dss[0].PatientID).startswith("ANON-") and str(dss[0].PatientName) == "ANON^" + dss[0].PatientID[5:]
    assert all(ds.StudyDate == "" and ds.PatientBirthDate == "" and ds.PatientSex == "" for ds in dss)
    assert all(ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod for ds in dss)
    assert {ds.SeriesInstanceUID for ds in dss[:-2]} != {dss[-1].SeriesInstanceUID}
    rt = dss[-2].ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    cts = {ds.SOPInstanceUID for ds in dss[:-2]}
    assert {c.ReferencedSOPInstanceUID for c in rt.RTReferencedSeriesSequence[0].ContourImageSequence} == cts
    assert dss[-1].ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == dss[-2].SOPInstanceUID
    p = quiet_read(tmp_path / "anon")
    assert np.array_equal(p.ct, tiny_patient().ct) and p.id == "anon"
    r = invoke("convert", "to-dicom", src, tmp_path / "x", "--anonymize", "--patient-name", "A")
    assert r.exit_code == 1 and "leave out --patient-name" in r.output
    r = invoke("convert", "to-dicom", src, tmp_path / "x", "--patient-name", "Doe\\Jane")
    assert r.exit_code == 1 and "is not a valid DICOM person name" in r.output


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)")
def test_anonymized_files_pass_dciodvfy(tmp_path):
    import subprocess

    folder = write_dicom_patient(tiny_patient(), tmp_path / "anon", anonymize=True)
    for f in (folder / "CT" / "CT_0001.dcm", folder / "RTSTRUCT.dcm", folder / "RTDOSE.dcm"):
        run = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60, check=False)
        lines = (run.stdout + run.stderr).splitlines()
        errors = [s for s in lines if s.startswith("Error")]
        assert not errors, (f.name, errors)
        assert not [s for s in lines if "Patient's Name" in s], lines  # not even a warning


def test_predict_anonymize_writes_the_set_and_is_checked_early(tmp_path):
    from rtgen.cli.predict import _write_anonymized

    p = tiny_patient("Doe_Jane")
    _write_anonymized(tmp_path / "out", p, p.dose * 0.9, 2.5, 10.0)
    (folder,) = list((tmp_path / "out").iterdir())
    assert folder.name.startswith("ANON-")
    dss = _identity(folder)
    assert {str(ds.PatientID) for ds in dss} == {folder.name} and dss[-1].DoseSummationType == "PREDICTED"
    assert quiet_read(folder).dose.max() == pytest.approx(63, abs=0.5)
    for extra in ([], ["--format", "dicom", "--report"]):
        r = invoke("predict", "--patients", example_patients_dir() / "pt_204", "--out", tmp_path / "p", "--anonymize",
                   *extra)
        assert r.exit_code == 1 and "--anonymize writes anonymized DICOM RT sets" in r.output, r.output
