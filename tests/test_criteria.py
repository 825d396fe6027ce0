"""Clinical criteria (OpenKBP-Opt's default set, criteria files) and `rtgen evaluate --criteria`.
Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError
from rtgen.dosimetry.criteria import ClinicalCriterion, CriteriaError, CriteriaSet, default_criteria, pooled_share


def _line(shape, start, values) -> tuple[np.ndarray, np.ndarray]:
    """A mask of len(values) voxels in a row from `start` and a dose holding `values` there."""
    mask = np.zeros(shape, bool)
    dose = np.zeros(shape, np.float32)
    idx = np.unravel_index(np.arange(start, start + len(values)), shape)
    mask[idx] = True
    dose[idx] = values
    return mask, dose


def test_default_set_is_openkbp_opt():
    labels = [c.label for c in default_criteria().criteria]
    assert labels == [
        "Brainstem D0.1cc <= 50 Gy", "SpinalCord D0.1cc <= 45 Gy", "Mandible D0.1cc <= 73.5 Gy",
        "RightParotid mean <= 26 Gy", "LeftParotid mean <= 26 Gy", "Larynx mean <= 45 Gy", "Esophagus mean <= 45 Gy",
        "PTV56+PTV63+PTV70 D99% >= 50.4 Gy", "PTV63+PTV70 D99% >= 56.7 Gy", "PTV70 D99% >= 63 Gy"]


def test_d01cc_follows_openkbp_convention():
    # 1 cc voxels: 0.1 cc is max(1, round(0.1)) = 1 voxel, the 100 - 1/10*100 = 90th percentile of 10 voxels
    shape = (4, 4, 4)
    c = ClinicalCriterion("Brainstem", "D0.1cc", max_gy=50)
    mask, dose = _line(shape, 0, np.arange(41, 51, dtype=np.float32))  # 41..50: 41 + 0.9 * 9 = 49.1
    assert c.value(dose, {"Brainstem": mask}, 1000.0) == pytest.approx(49.1)
    assert c.met(49.1)
    dose[mask] = [41, 42, 43, 44, 45, 46, 47, 48, 49, 60]  # 49 + 0.1 * (60 - 49) = 50.1
    assert c.value(dose, {"Brainstem": mask}, 1000.0) == pytest.approx(50.1)
    assert not c.met(50.1)
    assert c.met(50.0) and c.met(50.00005)  # at the limit (within float32 noise) is met


def test_ptv_coverage_counts_the_higher_dose_ptvs_inside():
    shape = (8, 8, 8)
    ptv56, dose = _line(shape, 0, [40.0, 40.0] + [56.0] * 98)  # 2 cold voxels in 100
    ptv70, d70 = _line(shape, 100, [70.0] * 200)
    dose += d70
    structures = {"PTV56": ptv56, "PTV70": ptv70}
    alone = ClinicalCriterion("PTV56", "D99%", min_percent_rx=90)
    nested = ClinicalCriterion("PTV56", "D99%", min_percent_rx=90, union_with=("PTV63", "PTV70"))
    assert alone.limit_gy == pytest.approx(50.4)
    # PTV56 alone: 1st percentile of 100 values sits at position 0.99, between the two 40s -> 40 Gy, not met
    assert alone.value(dose, structures, 8.0) == pytest.approx(40.0) and not alone.met(40.0)
    # with PTV70 (absent PTV63 skipped): 300 values, position 2.99 lies between two 56s -> 56 Gy, met
    assert nested.value(dose, structures, 8.0) == pytest.approx(56.0) and nested.met(56.0)


def test_share_met_skips_absent_structures():
    shape = (6, 6, 6)
    rp, dose = _line(shape, 0, [20.0, 30.0])  # mean 25 <= 26: met
    lp, d2 = _line(shape, 10, [30.0, 30.0])  # mean 30: not met
    ptv70, d3 = _line(shape, 20, [64.0] * 50)  # D99 64 >= 63: met
    dose = dose + d2 + d3
    result = default_criteria().evaluate(dose, {"RightParotid": rp, "LeftParotid": lp, "PTV70": ptv70}, 8.0)
    by = {r.label: r for r in result.rows}
    assert by["RightParotid mean <= 26 Gy"].met is True and by["RightParotid mean <= 26 Gy"].value == pytest.approx(25)
    assert by["LeftParotid mean <= 26 Gy"].met is False
    assert by["PTV70 D99% >= 63 Gy"].met is True
    assert by["Brainstem D0.1cc <= 50 Gy"].met is None and by["Brainstem D0.1cc <= 50 Gy"].value is None
    # PTV56's criterion is not applicable without a PTV56, although PTV70 (in its union) is present
    assert by["PTV56+PTV63+PTV70 D99% >= 50.4 Gy"].met is None
    assert (result.n_met, result.n_applicable) == (2, 3) and result.share_met == pytest.approx(2 / 3)
    other = default_criteria().evaluate(dose, {"RightParotid": rp}, 8.0)  # 1 of 1
    assert pooled_share([result, other]) == pytest.approx(3 / 4)  # pooled over pairs, not a mean of shares


def test_criteria_files(tmp_path):
    s = CriteriaSet.from_dict(default_criteria().to_dict())
    assert s == default_criteria()  # the dict form round-trips
    (tmp_path / "c.yaml").write_text("name: strict\ncriteria:\n  - {structure: SpinalCord, metric: D0.1cc, max_gy: 40}\n"
                                     "  - {structure: PTV70, metric: D95%, min_gy: 66.5}\n")
    y = CriteriaSet.from_file(tmp_path / "c.yaml")
    assert y.name == "strict" and [c.label for c in y.criteria] == ["SpinalCord D0.1cc <= 40 Gy", "PTV70 D95% >= 66.5 Gy"]
    (tmp_path / "c.json").write_text(json.dumps([{"structure": "Larynx", "metric": "mean", "max_gy": 40}]))
    assert CriteriaSet.from_file(tmp_path / "c.json").criteria[0].label == "Larynx mean <= 40 Gy"

    bad = {
        "{not json": "line 1: not valid JSON",
        '{"criteria": [{"structure": "Brainstem", "metric": "D0.1cc", "max_gy": 50, "min_gy": 1}]}':
            "criterion 1: criterion 'Brainstem' 'D0.1cc': needs exactly one limit",
        '{"criteria": [{"structure": "Brain_Stem", "metric": "mean", "max_gy": 50}]}': "unknown structure",
        '{"criteria": [{"structure": "Larynx", "metric": "D2", "max_gy": 50}]}': "metric must be",
        '{"criteria": [{"structure": "Larynx", "metric": "mean", "max_percent_rx": 50}]}': "needs prescription_gy",
        '{"criteria": [{"structure": "Larynx", "metric": "mean", "max_gy": "50"}]}': "max_gy must be a number",
        '{"criteria": [{"structure": "Larynx", "metric": "mean", "max_gy": 5, "colour": 1}]}': "unknown key(s) colour",
        '{"criteria": []}': "at least one criterion",
    }
    for text, message in bad.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DataError) as e:
            CriteriaSet.from_file(tmp_path / "bad.json")
        assert "bad.json" in str(e.value) and message in str(e.value), str(e.value)
    (tmp_path / "bad.yaml").write_text("criteria: [\n  {structure: Larynx\n")
    with pytest.raises(DataError, match=r"bad.yaml, line \d+: not valid YAML"):
        CriteriaSet.from_file(tmp_path / "bad.yaml")
    with pytest.raises(DataError, match="criteria file not found"):
        CriteriaSet.from_file(tmp_path / "missing.json")
    with pytest.raises(CriteriaError, match="listed twice"):
        CriteriaSet("x", (ClinicalCriterion("Larynx", "mean", max_gy=45),) * 2)


def test_cli_criteria(tmp_path, examples_dir):
    from rtgen.data import read_patient, write_dose_csv

    pred = tmp_path / "pred"
    patients = {}
    for pid in ("pt_204", "pt_219"):
        p = read_patient(examples_dir / pid, load_ct=False)
        write_dose_csv(pred / f"{pid}.csv", (p.dose * 0.8).astype(np.float32))  # 20 % cold: no PTV covered
        patients[pid] = p
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(examples_dir), "--out",
                                 str(tmp_path / "ev"), "--criteria"])
    assert r.exit_code == 0, r.output
    assert "Clinical criteria (OpenKBP-Opt)" in r.output and "met / applicable" in r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())["criteria"]
    card = default_criteria()
    direct = {pid: card.evaluate((p.dose * 0.8).astype(np.float32), p.structures, p.voxel_volume_mm3)
              for pid, p in patients.items()}
    ref = {pid: card.evaluate(p.dose, p.structures, p.voxel_volume_mm3) for pid, p in patients.items()}
    assert m["share_met"] == pytest.approx(pooled_share(direct.values()))
    assert m["reference_share_met"] == pytest.approx(pooled_share(ref.values()))
    assert m["per_criterion"]["PTV70 D99% >= 63 Gy"]["share_met"] == 0.0  # 0.8 x 70 Gy < 63 Gy everywhere
    # pt_204 has no Mandible or Esophagus, pt_219 no Larynx or Esophagus: 8 applicable each
    assert m["per_patient"]["pt_204"]["applicable"] == 8 and m["per_patient"]["pt_219"]["applicable"] == 8
    assert m["per_criterion"]["Esophagus mean <= 45 Gy"] == {"share_met": None, "reference_share_met": None,
                                                             "applicable": 0}
    rows = list(csv.DictReader((tmp_path / "ev" / "per_patient.csv").open()))
    for row in rows:
        d = direct[row["patient"]]
        assert (int(row["criteria_met"]), int(row["criteria_applicable"])) == (d.n_met, d.n_applicable)
        assert int(row["criteria_met_ref"]) == ref[row["patient"]].n_met
    table = list(csv.DictReader((tmp_path / "ev" / "criteria.csv").open()))
    assert len(table) == 2 * 10 and {t["met"] for t in table} <= {"yes", "no", "n/a"}

    # the reference folder itself scored as the dose: its share is the reference's
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(examples_dir), "--ref", str(examples_dir), "--out",
                                 str(tmp_path / "ev2"), "--criteria"])
    assert r.exit_code == 0, r.output
    m2 = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["criteria"]
    assert m2["share_met"] == m2["reference_share_met"] == pytest.approx(pooled_share(ref.values()))

    # a bad criteria file is one clear line, before any patient is read
    (tmp_path / "c.json").write_text('{"criteria": [{"structure": "Cord", "metric": "mean", "max_gy": 45}]}')
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(examples_dir),
                                 "--criteria-file", str(tmp_path / "c.json")])
    assert r.exit_code == 1 and "c.json: criterion 1: criterion 'Cord' 'mean': unknown structure" in r.output
    assert "Traceback" not in r.output
