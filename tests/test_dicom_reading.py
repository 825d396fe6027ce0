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
