"""Every damaged input, impossible value and failing disk of the robustness issue: one clear line
naming the culprit, before any long compute, nothing half-written, and batches that go on.

Disks are real: a full disk and a read-only mount are tmpfs mounts (root only; skipped elsewhere).
"""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.atomic import atomic_write_text, output_dir
from rtgen.core.errors import ConfigError, DataError, OutputError, ValueRangeError
from rtgen.data import load_patient, read_patient
from rtgen.data.sources import find_patients
from rtgen.data.sources.nifti import read_nifti, write_nifti, write_nifti_patient
from rtgen.data.sources.npz import write_npz
from rtgen.dosimetry import cumulative_dvh, dose_score, dvh_metrics, gamma_pass_rate, homogeneity_index
from rtgen.inference.writers import write_dose

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    """Exit 1, the culprit named, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output.replace("\n", " "), result.output


def set_first_row(path: Path, row: str) -> None:
    lines = path.read_text().splitlines()
    lines[1] = row
    path.write_text("\n".join(lines) + "\n")


def plain_csv(folder: Path, stem: str) -> Path:
    """Replace `stem.csv.gz` by the same rows uncompressed, ready to be edited; return its path."""
    packed = folder / f"{stem}.csv.gz"
    plain = folder / f"{stem}.csv"
    plain.write_text(gzip.decompress(packed.read_bytes()).decode())
    packed.unlink()
    return plain


def mount_tmpfs(where: Path, options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    return where


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with 64 KiB of room."""
    mnt = mount_tmpfs(tmp_path / "full", "size=64k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def read_only(tmp_path):
    mnt = mount_tmpfs(tmp_path / "ro", "ro,size=64k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def split_with_one_bad(tmp_path, examples_dir):
    """pt_204 intact, pt_219 with a truncated ct.csv.gz."""
    split = tmp_path / "split"
    shutil.copytree(examples_dir, split)
    ct = split / "pt_219" / "ct.csv.gz"
    data = ct.read_bytes()
    ct.write_bytes(data[: len(data) // 2])
    return split


# ---------------------------------------------------------------- readers


def test_truncated_gzip_names_the_file(split_with_one_bad):
    with pytest.raises(DataError, match=r"pt_219/ct.csv.gz: truncated or corrupt compressed file"):
        read_patient(split_with_one_bad / "pt_219")


@pytest.mark.parametrize("row, problem", [
    ("7,-2.5", "line 2: value -2.5 is a negative dose"),
    ("7,1e6", "line 2: value 1e+06 is above the physical ceiling of 200 Gy"),
    ("7,1e39", "line 2: value 1e+39 is above the physical ceiling of 200 Gy"),
])
def test_impossible_doses_are_refused_by_the_reader(patient_copy, row, problem):
    set_first_row(plain_csv(patient_copy, "dose"), row)
    with pytest.raises(DataError, match=re.escape(f"dose.csv, {problem}")):
        read_patient(patient_copy)


def test_tiny_negative_doses_are_rounding_noise_set_to_zero(patient_copy):
    set_first_row(plain_csv(patient_copy, "dose"), "7,-0.0004")
    assert read_patient(patient_copy).dose.min() == 0


def test_ct_that_would_overflow_int16_is_refused(patient_copy):
    set_first_row(plain_csv(patient_copy, "ct"), "7,99999")
    with pytest.raises(DataError, match=r"ct.csv, line 2: value 99999 is outside the CT range that int16 stores"):
        read_patient(patient_copy)


@pytest.mark.parametrize("value", ["5", "0", "abc"])
def test_mask_values_other_than_empty_or_one_are_refused(patient_copy, value):
    plain = plain_csv(patient_copy, "PTV70")
    index = plain.read_text().splitlines()[1].split(",")[0]
    set_first_row(plain, f"{index},{value}")
    with pytest.raises(DataError, match=rf"PTV70.csv, line 2: value '{value}' in a mask"):
        read_patient(patient_copy)


def test_dose_csv_that_is_a_folder_is_not_taken_for_unlabelled(patient_copy):
    (patient_copy / "dose.csv.gz").unlink()
    (patient_copy / "dose.csv").mkdir()
    with pytest.raises(DataError, match=r"dose.csv: is not a regular file"):
        read_patient(patient_copy)


def test_two_formats_for_one_volume_are_refused(patient_copy, patient):
    write_nifti(patient_copy / "ct.nii.gz", patient.ct, patient.spacing)
    with pytest.raises(DataError, match=r"pt_204: holds ct.csv.gz and ct.nii.gz: two files for the volume 'ct'"):
        load_patient(patient_copy)


def test_empty_patient_folder_in_a_split_is_listed_and_fails_by_name(tmp_path, examples_dir):
    split = tmp_path / "split"
    shutil.copytree(examples_dir, split)
    (split / "pt_300").mkdir()
    assert [p.name for p in find_patients(split)] == ["pt_204", "pt_219", "pt_300"]
    with pytest.raises(DataError, match=r"pt_300: is an empty patient folder"):
        load_patient(split / "pt_300")


def test_nifti_volumes_are_checked(tmp_path, patient):
    folder = write_nifti_patient(patient, tmp_path / "pt_204")
    dose = folder / "dose.nii.gz"
    nib.save(nib.Nifti1Image(patient.dose.astype(np.complex64), np.eye(4)), str(dose))
    with pytest.raises(DataError, match=r"dose.nii.gz: dose holds complex values \(complex64\)"):
        load_patient(folder)
    huge = patient.dose.copy()
    huge[60, 61, 62] = 1e30
    write_nifti(dose, huge, patient.spacing)
    with pytest.raises(DataError, match=r"dose.nii.gz: voxel \(60, 61, 62\): value 1e\+30 is above the physical ceiling"):
        load_patient(folder)
    write_nifti(dose, patient.dose, patient.spacing)
    mask = patient.structures["PTV70"].astype(np.uint8) * 5
    write_nifti(folder / "PTV70.nii.gz", mask, patient.spacing)
    with pytest.raises(DataError, match=r"PTV70.nii.gz: voxel \(\d+, \d+, \d+\): value 5 is not a mask value"):
        load_patient(folder)


def test_truncated_nifti_and_npz_name_the_file(tmp_path, patient):
    path = write_nifti(tmp_path / "dose.nii.gz", patient.dose, patient.spacing)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"dose.nii.gz: not a readable NIfTI file"):
        read_nifti(path, "dose")
    cache = write_npz(patient, tmp_path / "pt_204.npz")
    cache.write_bytes(cache.read_bytes()[:20000])
    with pytest.raises(DataError, match=r"pt_204.npz: not a readable patient cache"):
        load_patient(cache)


# ---------------------------------------------------------------- numerics


def test_metrics_refuse_impossible_doses_at_their_input():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    good = np.full((8, 8, 8), 50.0)
    for bad_value, rule in ((np.nan, "not finite"), (1e6, "above the physical ceiling"), (-5.0, "negative")):
        bad = good.copy()
        bad[3, 4, 5] = bad_value
        with pytest.raises(ValueRangeError, match=rf"voxel \(3, 4, 5\) .*{rule}"):
            dose_score(good, bad, mask)
        with pytest.raises(ValueRangeError, match=rule):
            dvh_metrics(bad, {"PTV70": mask}, 1.0)
        with pytest.raises(ValueRangeError, match=rule):
            homogeneity_index(bad, mask)
        with pytest.raises(ValueRangeError, match=rule):
            gamma_pass_rate(good, bad, (1.0, 1.0, 1.0))
    with pytest.raises(ValueRangeError, match="above the physical ceiling"):
        cumulative_dvh(np.array([1.0, 1e6]))  # refused before a ten-million-bin histogram is built
    assert isinstance(ValueRangeError("x"), ValueError)


# ---------------------------------------------------------------- batches go on


def test_predict_reports_the_bad_patient_and_finishes_the_good(tmp_path, split_with_one_bad):
    r = invoke("predict", "--patients", split_with_one_bad, "--out", tmp_path / "pred")
    one_line_error(r, "pt_219/ct.csv.gz: truncated or corrupt compressed file", "1 of 2 patients predicted", "1 failed")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["metrics.json", "pt_204.csv", "pt_204_dvh.csv",
                                                                   "pt_204_std.nii.gz"]


def test_inspect_reports_the_bad_patient_and_finishes_the_good(tmp_path, split_with_one_bad):
    (split_with_one_bad / "pt_300").mkdir()
    r = invoke("inspect", split_with_one_bad, "--out", tmp_path / "ins")
    one_line_error(r, "pt_219/ct.csv.gz: truncated", "pt_300: is an empty patient folder", "1 of 3 patients inspected")
    summary = json.loads((tmp_path / "ins" / "summary.json").read_text())
    assert [s["patient"] for s in summary] == ["pt_204"]


def test_evaluate_goes_on_past_an_impossible_prediction(tmp_path, examples_dir, patients):
    pred = tmp_path / "pred"
    for p in patients:
        write_dose(pred, p.id, p.dose * 0.98, p.spacing, "nifti")
    write_dose(pred, "pt_219", patients[1].dose * 100, patients[1].spacing, "nifti")  # cGy written as Gy
    r = invoke("evaluate", "--pred", pred, "--ref", examples_dir, "--out", tmp_path / "ev")
    one_line_error(r, "pt_219.nii.gz: voxel", "above the physical ceiling of 200 Gy", "1 of 2 patients evaluated")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_patients"] == 1


# ---------------------------------------------------------------- outputs: preflight and disk errors


@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect", "demo"])
def test_out_under_a_file_fails_at_once_and_writes_nothing(tmp_path, examples_dir, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "results"
    args = {"predict": ["predict", "--patients", examples_dir, "--out", out],
            "evaluate": ["evaluate", "--pred", examples_dir, "--ref", examples_dir, "--out", out],
            "inspect": ["inspect", examples_dir, "--out", out],
            "demo": ["demo", "--out", out]}[command]
    r = invoke(*args)
    one_line_error(r, f"{out}: cannot be written: {blocker} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect", "demo"])
def test_read_only_out_fails_before_the_model_runs(read_only, examples_dir, command):
    out = read_only / "results"
    args = {"predict": ["predict", "--patients", examples_dir, "--out", out],
            "evaluate": ["evaluate", "--pred", examples_dir, "--ref", examples_dir, "--out", out],
            "inspect": ["inspect", examples_dir, "--out", out],
            "demo": ["demo", "--out", out]}[command]
    r = invoke(*args)
    one_line_error(r, "the file system is read-only")
    assert "predicted in" not in r.output  # failed before any prediction


def test_full_disk_is_found_before_the_compute(full_disk, examples_dir):
    r = invoke("predict", "--patients", examples_dir, "--out", full_disk / "pred")
    one_line_error(r, f"{full_disk / 'pred'}: cannot be written: the outputs need about", "is free")
    assert list(full_disk.iterdir()) == []


def test_disk_full_while_writing_leaves_nothing_partial(full_disk, patient):
    with pytest.raises(OutputError, match=r"pt_204.nii.gz: cannot be written: no space left on the device"):
        write_dose(full_disk, patient.id, np.random.default_rng(0).random(patient.grid, np.float32), patient.spacing, "nifti")
    assert list(full_disk.iterdir()) == []  # no temporary or half-written file
    with pytest.raises(OutputError, match="no space left"):
        atomic_write_text(full_disk / "big.txt", "x" * 200_000)
    assert list(full_disk.iterdir()) == []


def test_output_dir_removes_what_it_created_when_the_command_fails(tmp_path):
    with pytest.raises(DataError):
        with output_dir(tmp_path / "a" / "b"):
            raise DataError("x", "fails during compute")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- configs and help


@pytest.mark.parametrize("override, rule", [
    ("features.dose_max_gy=0", "features.dose_max_gy: Input should be greater than 0"),
    ("train.epochs=-3", "train.epochs: Input should be greater than or equal to 1"),
    ("train.batch_size=8.5", "train.batch_size: Input should be a valid integer"),
])
def test_impossible_config_values_are_refused_before_any_data_is_read(tmp_path, override, rule):
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: mamba_unet_v2}\ndata: {train: /nonexistent, val: /nonexistent}\n")
    r = invoke("train", config, override, "--out", tmp_path / "runs")
    one_line_error(r, rule)
    assert not (tmp_path / "runs").exists()


def test_help_prints_the_override_syntax_as_written():
    r = invoke("train", "--help")
    assert "[section.key=value ...]" in r.output and "<bool>" not in r.output


def test_a_real_process_prints_one_line_for_a_disk_error(tmp_path, examples_dir):
    blocker = tmp_path / "f"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "rtgen", "inspect", str(examples_dir), "--out", str(blocker / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


def test_config_error_is_a_config_error(tmp_path):
    from rtgen.engine.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text("42\n")
    with pytest.raises(ConfigError):
        load_config(config)


def test_train_run_folder_under_a_file_fails_before_any_feature_is_computed(tmp_path, examples_dir):
    blocker = tmp_path / "f"
    blocker.write_text("")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: unet, channels: [4, 8, 8, 16]}}\n"
                      f"data: {{train: {examples_dir}, val: {examples_dir}}}\ntrain: {{epochs: 1}}\n")
    r = invoke("train", config, "--out", blocker / "run")
    one_line_error(r, f"{blocker / 'run'}: cannot be written: {blocker} is a file")
    assert "train features" not in r.output
