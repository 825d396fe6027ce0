import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.data import load_patient, read_patient, write_dose_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_subcommands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("inspect", "convert", "evaluate"):
        assert cmd in r.output


def test_inspect_bundled_examples(tmp_path):
    r = invoke("inspect", "--out", tmp_path / "insp")
    assert r.exit_code == 0, r.output
    assert "pt_204" in r.output and "pt_219" in r.output and "PTV70" in r.output
    assert (tmp_path / "insp" / "dvh_pt_204.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "insp" / "summary.json").read_text())
    s = summary[0]["structures"]
    assert s["PTV70"]["volume_cc"] == pytest.approx(226.9, abs=0.1)
    assert 60 < s["PTV70"]["D_95"] < 75 and "mean" in s["Brainstem"]


@pytest.mark.parametrize("fmt", ["npz", "nifti"])
def test_convert_cache_reads_identically(tmp_path, examples_dir, patients, fmt):
    r = invoke("convert", "openkbp", examples_dir, tmp_path / "cache", "--format", fmt)
    assert r.exit_code == 0, r.output
    for p in patients:
        entry = tmp_path / "cache" / (f"{p.id}.npz" if fmt == "npz" else p.id)
        c = load_patient(entry)
        assert c.spacing == pytest.approx(p.spacing)
        for a, b in [(c.ct, p.ct), (c.dose, p.dose), (c.possible_dose_mask, p.possible_dose_mask)]:
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert c.structures.keys() == p.structures.keys()
        assert all(np.array_equal(c.structures[k], p.structures[k]) for k in p.structures)


def test_failing_convert_leaves_nothing(tmp_path, examples_dir):
    src = tmp_path / "src"
    shutil.copytree(examples_dir, src)
    (src / "pt_219" / "voxel_dimensions.csv").write_text("1\n2\n")
    r = invoke("convert", "openkbp", src, tmp_path / "cache")
    assert r.exit_code == 1
    assert "voxel_dimensions.csv: voxel dimensions must be three positive numbers" in r.output
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def _predictions(tmp_path, examples_dir, scale=1.0):
    pred = tmp_path / "pred"
    for pid in ("pt_204", "pt_219"):
        p = read_patient(examples_dir / pid, load_ct=False)
        write_dose_csv(pred / f"{pid}.csv", p.dose * scale)
    return pred


def test_evaluate_reference_against_itself_is_zero(tmp_path, examples_dir):
    pred = _predictions(tmp_path, examples_dir)
    r = invoke("evaluate", "--pred", pred, "--ref", examples_dir, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["dose_score"] == 0.0 and m["dvh_score"] == 0.0 and m["n_patients"] == 2
    assert "dose score" in r.output and "0.0000" in r.output


def test_evaluate_outputs(tmp_path, examples_dir):
    pred = _predictions(tmp_path, examples_dir, scale=0.95)
    r = invoke("evaluate", "--pred", pred, "--ref", examples_dir, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["dose_score"] > 0.5 and m["dvh_score"] > 0.5
    assert set(m["dvh_metric_errors"]) == {"D_0.1_cc", "mean", "D_99", "D_95", "D_1"}
    assert set(m["hi_abs_error"]) == {"PTV56", "PTV63", "PTV70"}
    rows = (tmp_path / "ev" / "per_patient.csv").read_text().splitlines()
    assert rows[0].startswith("patient,dose_score,dvh_score") and len(rows) == 3
    assert (tmp_path / "ev" / "dvh_pt_219.png").exists()


def test_evaluate_accepts_nifti_predictions(tmp_path, examples_dir, patients):
    from rtgen.data.sources.nifti import write_nifti

    for p in patients:
        write_nifti(tmp_path / "pred" / f"{p.id}.nii.gz", p.dose, p.spacing)
    r = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", examples_dir)
    assert r.exit_code == 0, r.output


def test_evaluate_missing_patient_is_named_and_the_others_are_scored(tmp_path, examples_dir):
    pred = _predictions(tmp_path, examples_dir)
    (pred / "pt_219.csv").unlink()
    r = invoke("evaluate", "--pred", pred, "--ref", examples_dir, "--out", tmp_path / "ev")
    assert r.exit_code == 1
    assert "no prediction for patient pt_219" in r.output and "1 of 2 patients evaluated" in r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_patients"] == 1 and list(metrics["failed_patients"]) == ["pt_219"]


def test_real_process_prints_one_clear_error(tmp_path, examples_dir):
    pred = _predictions(tmp_path, examples_dir)
    (pred / "pt_204.csv").write_text(",data\n5,abc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rtgen", "evaluate", "--pred", str(pred), "--ref", str(examples_dir), "--out", str(tmp_path / "ev")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "pt_204.csv, line 2: non-numeric value 'abc'" in proc.stderr.replace("\n", "")
    assert "1 of 2 patients evaluated" in proc.stdout  # pt_219 is still scored
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_patients"] == 1


def test_predict_model_hub_names_a_shipped_model(tmp_path, examples_dir):
    """`--model hub:NAME` loads a model shipped in rtgen; an unknown name lists the shipped ones."""
    r = runner.invoke(app, ["predict", "--model", "hub:no_such_model", "--patients", str(examples_dir / "pt_204"),
                            "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no shipped model 'no_such_model'" in r.output and "diffkt3d_openkbp" in r.output
    r = runner.invoke(app, ["predict", "--model", "hub:mamba_unet_v2_openkbp", "--patients",
                            str(examples_dir / "pt_204"), "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / "pt_204.csv").is_file()
