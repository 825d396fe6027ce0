import gzip
import warnings

import numpy as np
import pytest

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.core.structures import STRUCTURES
from rtgen.data import PatientSplit, load_patient, read_dose_csv, read_patient, write_dose_csv, write_patient
from rtgen.data.sources.nifti import read_nifti, write_nifti
from rtgen.data.sources.npz import read_npz, write_npz


def test_reads_bundled_patient(patient):
    assert patient.id == "pt_204"
    assert patient.ct.dtype == np.int16 and patient.ct.shape == (128, 128, 128)
    assert patient.ct.min() == -1024 and patient.ct.max() > 1000
    assert patient.dose.dtype == np.float32 and 70 < patient.dose.max() < 80
    assert patient.possible_dose_mask.dtype == bool
    assert list(patient.structures) == [s for s in STRUCTURES if s in patient.structures]
    assert "Mandible" not in patient.structures and "PTV70" in patient.structures
    assert patient.spacing == pytest.approx((3.906, 3.906, 2.5))
    # dose is zero outside the possible dose mask, as the challenge states
    assert not patient.dose[~patient.possible_dose_mask].any()


def test_csv_values_land_at_flat_c_order_indices(examples_dir, patient):
    with gzip.open(examples_dir / "pt_204" / "dose.csv.gz", "rt") as f:
        f.readline()
        idx, val = f.readline().strip().split(",")
    assert patient.dose.ravel()[int(idx)] == np.float32(float(val))
    with gzip.open(examples_dir / "pt_204" / "ct.csv.gz", "rt") as f:
        f.readline()
        idx, val = f.readline().strip().split(",")
    assert patient.ct.ravel()[int(idx)] == int(float(val)) - 1024


def test_plain_and_gzipped_csv_read_identically(tmp_path, patient):
    write_patient(patient, tmp_path / "plain" / "pt_204")
    write_patient(patient, tmp_path / "gz" / "pt_204", compress=True)
    for sub in ("plain", "gz"):
        again = read_patient(tmp_path / sub / "pt_204")
        assert np.array_equal(again.ct, patient.ct)
        assert np.array_equal(again.dose, patient.dose)
        assert np.array_equal(again.possible_dose_mask, patient.possible_dose_mask)
        assert again.structures.keys() == patient.structures.keys()
        assert all(np.array_equal(again.structures[k], patient.structures[k]) for k in patient.structures)
        assert again.spacing == patient.spacing


def test_unlabeled_patient_has_no_dose(patient_copy):
    (patient_copy / "dose.csv.gz").unlink()
    assert read_patient(patient_copy).dose is None


def test_split_is_lazy_and_sorted(examples_dir):
    split = PatientSplit(examples_dir, progress=False)
    assert split.ids == ["pt_204", "pt_219"]
    assert len(split) == 2
    assert [p.id for p in split] == ["pt_204", "pt_219"]
    assert split[1].id == "pt_219"


def test_submission_csv_round_trip(tmp_path, patient):
    pred = patient.dose * 0.97
    path = write_dose_csv(tmp_path / "pt_204.csv", pred)
    lines = path.read_text().splitlines()
    assert lines[0] == ",data"
    assert len(lines) - 1 == np.count_nonzero(pred)
    assert np.array_equal(read_dose_csv(path), pred.astype(np.float32))


def test_submission_refuses_nan_and_wrong_shape(tmp_path):
    bad = np.zeros((128, 128, 128), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_dose_csv(tmp_path / "pt_1.csv", bad)
    with pytest.raises(DataError, match="shape"):
        write_dose_csv(tmp_path / "pt_1.csv", np.zeros((64, 64, 64)))
    assert not list(tmp_path.iterdir())


def test_nifti_has_spacing_in_affine(tmp_path, patient):
    path = write_nifti(tmp_path / "dose.nii.gz", patient.dose, patient.spacing)
    arr, spacing = read_nifti(path)
    assert np.array_equal(arr, patient.dose)
    assert spacing == pytest.approx(patient.spacing)
    import nibabel as nib

    assert np.allclose(np.diag(nib.load(str(path)).affine)[:3], patient.spacing)


def test_npz_cache_identical(tmp_path, patient):
    again = read_npz(write_npz(patient, tmp_path / "pt_204.npz"))
    assert again.id == patient.id and again.spacing == patient.spacing
    for a, b in [(again.ct, patient.ct), (again.dose, patient.dose), (again.possible_dose_mask, patient.possible_dose_mask)]:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert load_patient(tmp_path / "pt_204.npz").structures.keys() == patient.structures.keys()


def test_npz_that_is_not_a_cache_is_rejected(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="other.npz.*not an rtgen patient cache"):
        read_npz(tmp_path / "other.npz")


# ---------------------------------------------------------------- bad input, one clear error each


def _rewrite(folder, name, text):
    for p in folder.glob(f"{name}.csv*"):
        p.unlink()
    (folder / f"{name}.csv").write_text(text)


def _dose_text(folder, edit):
    with gzip.open(folder / "dose.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    edit(lines)
    return "\n".join(lines) + "\n"


def test_missing_required_file(patient_copy):
    (patient_copy / "possible_dose_mask.csv.gz").unlink()
    with pytest.raises(DataError, match=r"possible_dose_mask\.csv: missing required file"):
        read_patient(patient_copy)
    (patient_copy / "voxel_dimensions.csv").unlink()
    (patient_copy / "possible_dose_mask.csv").write_text(",data\n")
    with pytest.raises(DataError, match=r"voxel_dimensions\.csv: missing required file"):
        read_patient(patient_copy)


def test_wrong_header(patient_copy):
    _rewrite(patient_copy, "dose", _dose_text(patient_copy, lambda l: l.__setitem__(0, "index,dose")))
    with pytest.raises(DataError, match=r"dose\.csv, line 1: wrong header"):
        read_patient(patient_copy)


@pytest.mark.parametrize(
    "row, message",
    [
        ("5,1.0,2.0", "line 11: malformed row '5,1.0,2.0': expected 2 fields, found 3"),
        ("5,abc", "line 11: non-numeric value 'abc'"),
        ("x5,1.0", "line 11: non-numeric or non-integer index 'x5'"),
        ("5,nan", "line 11: non-finite value 'nan'"),
        ("5,inf", "line 11: non-finite value 'inf'"),
        ("5,", "line 11: missing value"),
        ("2097152,1.0", r"line 11: index 2097152 out of range \[0, 2097152\)"),
    ],
)
def test_malformed_rows_name_the_line(patient_copy, row, message):
    _rewrite(patient_copy, "dose", _dose_text(patient_copy, lambda l: l.__setitem__(10, row)))
    with pytest.raises(DataError, match=r"dose\.csv, " + message):
        read_patient(patient_copy)


def test_repeated_index(patient_copy):
    def edit(lines):
        lines[20] = lines[5].split(",")[0] + ",1.0"

    _rewrite(patient_copy, "dose", _dose_text(patient_copy, edit))
    with pytest.raises(DataError, match=r"dose\.csv, line 21: index \d+ repeated \(first at line 6\)"):
        read_patient(patient_copy)


@pytest.mark.parametrize("text", ["3.9\n3.9\n", "3.9\n-3.9\n2.5\n", "a\nb\nc\n", "3.9\n3.9\nnan\n", ""])
def test_bad_voxel_dimensions(patient_copy, text):
    (patient_copy / "voxel_dimensions.csv").write_text(text)
    with pytest.raises(DataError, match=r"voxel_dimensions\.csv: voxel dimensions must be three positive numbers"):
        read_patient(patient_copy)


def test_folder_that_is_not_a_patient(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="is not an OpenKBP patient folder"):
        read_patient(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_patient(tmp_path / "missing")
    with pytest.raises(DataError, match="holds no patients"):
        PatientSplit(tmp_path)


def test_unknown_structure_is_a_warning_and_skipped(patient_copy):
    (patient_copy / "Cochlea.csv").write_text(",data\n5,\n")
    with pytest.warns(RtgenWarning, match="Cochlea.csv: unknown structure 'Cochlea' skipped"):
        p = read_patient(patient_copy)
    assert "Cochlea" not in p.structures


def test_good_patient_emits_no_warning(examples_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_patient(examples_dir / "pt_219")


def test_records_hold_named_volumes_on_one_grid(patient):
    from rtgen.data.records import Record

    r = patient.to_record()
    assert set(r.volumes) >= {"ct", "dose", "possible_dose_mask", *patient.structures}
    assert r.grid == patient.grid == (128, 128, 128) and r.spacing == patient.spacing
    assert r.voxel_volume_mm3 == patient.voxel_volume_mm3
    mr = Record("pair", {"ct": np.zeros((4, 5, 6)), "mr": np.ones((4, 5, 6))}, (1.0, 1.0, 2.5))
    assert mr.grid == (4, 5, 6) and mr.voxel_volume_mm3 == 2.5
    with pytest.raises(ValueError, match="volumes on different grids"):
        Record("bad", {"ct": np.zeros((4, 5, 6)), "mr": np.zeros((4, 5, 7))})
