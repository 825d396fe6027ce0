"""DVH estimate bands and the voxel spread in `rtgen evaluate` and `rtgen report`.

The prediction folder holds real files, as `rtgen predict` writes them for a model with bands:
`<id>.nii.gz` (the reference dose x 1.02), `<id>_std.nii.gz` (a voxel spread) and `<id>_dvh.csv`
(written with `rtgen.dosimetry.bands.to_csv`). The bands are built around the reference's own
values so that what they cover is known: every other DVH metric row's 80 % band holds the reference
value, one curve row in four does, and every 95 % band does.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError
from rtgen.core.structures import OARS, TARGETS
from rtgen.data import read_patient
from rtgen.dosimetry.bands import metric_value, read_dvh_estimate, to_csv
from rtgen.evaluation.dose import error_by_decile, rank_correlation
from rtgen.inference.writers import write_dose

runner = CliRunner()
IDS = ("pt_204", "pt_219")
CURVE_GY = (10.0, 30.0, 50.0, 65.0)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def estimate_rows(patient, wide: str | None = None) -> tuple[list[dict], dict]:
    """Rows of a DVH estimate around the reference's values, and what they must give: per unit
    (Gy, %) the number of rows and of 80 % bands that hold the reference value."""
    rows, counts = [], {"Gy": [0, 0], "%": [0, 0]}
    for name in TARGETS + OARS:
        mask = patient.structures.get(name)
        if mask is None or not mask.any():
            continue
        metrics = ["D_99", "D_95", "D_50", "D_1"] if name in TARGETS else ["mean", "D_0.1_cc"]
        values = patient.dose[mask]
        curve = [f"V_{x:g}Gy" for x in CURVE_GY if 0.0 < metric_value(values, f"V_{x:g}Gy", 1.0) < 100.0]
        for metric in metrics + curve:
            unit = "%" if metric.startswith("V_") else "Gy"
            ref = metric_value(values, metric, patient.voxel_volume_mm3)
            n = counts[unit][0]
            inside = n % 2 == 0 if unit == "Gy" else n % 4 == 0
            counts[unit][0] += 1
            counts[unit][1] += inside
            lo80, hi80 = (ref - 1.0, ref + 1.0) if inside else (ref + 1.0 + 1e-3, ref + 3.0 + 1e-3)  # width 2
            rows.append({"structure": name, "metric": metric, "unit": unit, "predicted": ref * 1.02,
                         "lower_80": lo80, "upper_80": hi80, "lower_95": ref - 3.0, "upper_95": ref + 3.0,  # width 6
                         "wide": name == wide})
    return rows, counts


@pytest.fixture(scope="module")
def bands_folder(tmp_path_factory, examples_dir):
    """A prediction folder with a DVH estimate and a spread for both bundled patients, and the counts."""
    root = tmp_path_factory.mktemp("bands")
    counts = {}
    for pid in IDS:
        p = read_patient(examples_dir / pid, load_ct=False)
        pred = (p.dose * 1.02).astype(np.float32)
        std = np.abs(pred.astype(np.float64) - p.dose).astype(np.float32)  # the spread is the error itself
        write_dose(root / "pred", pid, pred, p.spacing, fmt="nifti", std=std)
        rows, counts[pid] = estimate_rows(p, wide="PTV70")
        (root / "pred" / f"{pid}_dvh.csv").write_text(to_csv(rows))
    return root, counts


def test_evaluate_reports_band_coverage_and_the_spread(bands_folder, examples_dir):
    root, counts = bands_folder
    r = invoke("evaluate", "--pred", root / "pred", "--ref", examples_dir, "--out", root / "out")
    assert r.exit_code == 0, r.output
    m = json.loads((root / "out" / "metrics.json").read_text())
    bands = m["dvh_bands"]
    n_gy = sum(c["Gy"][0] for c in counts.values())
    n_pct = sum(c["%"][0] for c in counts.values())
    in_gy = sum(c["Gy"][1] for c in counts.values())
    in_pct = sum(c["%"][1] for c in counts.values())
    assert n_gy > 20 and n_pct > 10 and bands["patients"] == 2
    b80, b95 = bands["levels"]["80"], bands["levels"]["95"]
    assert b80["cases"] == b95["cases"] == n_gy + n_pct
    assert b80["coverage"] == pytest.approx((in_gy + in_pct) / (n_gy + n_pct), abs=1e-12)
    assert b80["coverage_gy"] == pytest.approx(in_gy / n_gy, abs=1e-12)
    assert b80["coverage_pct"] == pytest.approx(in_pct / n_pct, abs=1e-12)
    assert b80["mean_width_gy"] == pytest.approx(2.0) and b80["mean_width_pct"] == pytest.approx(2.0)
    assert b95["coverage"] == b95["coverage_gy"] == b95["coverage_pct"] == 1.0
    assert b95["mean_width_gy"] == pytest.approx(6.0)
    # per structure: PTV70's 4 DVH metrics in both patients, 2 of each patient's inside
    assert bands["per_structure"]["PTV70"]["95"]["coverage"] == 1.0
    assert set(bands["per_structure"]) >= {"PTV70", "SpinalCord"}
    per = {pid: c["Gy"][1] + c["%"][1] for pid, c in counts.items()}
    for pid, c in counts.items():
        assert bands["per_patient"][pid]["80"] == pytest.approx(per[pid] / (c["Gy"][0] + c["%"][0]), abs=1e-12)
    with open(root / "out" / "per_patient.csv") as f:
        table = {row["patient"]: row for row in csv.DictReader(f)}
    for pid in IDS:
        assert float(table[pid]["band_coverage_80"]) == pytest.approx(bands["per_patient"][pid]["80"], abs=1e-9)
        assert float(table[pid]["band_coverage_95"]) == 1.0
        assert float(table[pid]["uncertainty_error_rank_correlation"]) == pytest.approx(1.0, abs=1e-6)
    # the spread is the error: rank correlation 1, mean |error| rising decile by decile
    assert m["uncertainty_error_rank_correlation_mean"] == pytest.approx(1.0, abs=1e-6)
    deciles = m["error_by_uncertainty_decile"]
    errors, edges = deciles["mean_abs_error_gy"], deciles["std_edges_gy"]
    assert len(errors) == 10 and len(edges) == 11
    assert np.all(np.diff(errors) > 0) and np.all(np.diff(edges) >= 0)
    masks = sum(int(read_patient(examples_dir / pid, load_ct=False).possible_dose_mask.sum()) for pid in IDS)
    assert deciles["voxels"] == masks
    # the printed summary: one line per band level, and the deciles
    out = " ".join(r.output.split())
    assert f"DVH estimate 80 % band (2 patients): {100 * b80['coverage']:.1f} % of {n_gy + n_pct} reference" in out
    assert "DVH estimate 95 % band (2 patients): 100.0 %" in out and "mean width 6.00 Gy, 6.00 %" in out
    assert "rank correlation (Spearman)" in out and "mean |error| by decile of predicted std" in out


def test_malformed_dvh_estimate_is_one_line_and_the_batch_goes_on(bands_folder, examples_dir, tmp_path):
    root, _ = bands_folder
    pred = tmp_path / "pred"
    shutil.copytree(root / "pred", pred)
    bad = pred / "pt_219_dvh.csv"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + [lines[2] + ",7"] + lines[3:]) + "\n")  # line 3: one field too many
    r = invoke("evaluate", "--pred", pred, "--ref", examples_dir, "--out", tmp_path / "out")
    assert r.exit_code == 1
    assert r.output.count("error: ") == 1, r.output  # one line (the progress bar may share it)
    line = r.output.split("error: ")[1].splitlines()[0]
    assert line.endswith("pt_219_dvh.csv: line 3 has 10 fields, the header 9 (skipped)"), line
    assert "1 of 2 patients evaluated" in r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["n_patients"] == 1 and list(m["dvh_bands"]["per_patient"]) == ["pt_204"]
    assert "pt_219_dvh.csv" in m["failed_patients"]["pt_219"]


def test_dvh_estimate_rows_are_checked(tmp_path):
    header = "structure,metric,unit,predicted,lower_80,upper_80,wide\n"
    for body, says in (("Spleen,mean,Gy,1,0,2,0\n", "structure 'Spleen'"),
                       ("Larynx,D_200,Gy,1,0,2,0\n", "not a DVH metric"),
                       ("Larynx,Dmax,Gy,1,0,2,0\n", "not a DVH metric"),
                       ("Larynx,V_20Gy,Gy,1,0,2,0\n", "in 'Gy', not '%'")):
        (tmp_path / "pt_1_dvh.csv").write_text(header + body)
        with pytest.raises(DataError, match=says) as e:
            read_dvh_estimate(tmp_path, "pt_1")
        assert "pt_1_dvh.csv, line 2" in str(e.value)
    (tmp_path / "pt_1_dvh.csv").write_text("structure,metric,unit,predicted,lower_80,upper_90,wide\nLarynx,mean,Gy,1,0,2,0\n")
    with pytest.raises(DataError, match=r"pt_1_dvh.csv, line 1: column 'lower_80'"):
        read_dvh_estimate(tmp_path, "pt_1")
    assert read_dvh_estimate(tmp_path, "pt_2") is None
    (tmp_path / "pt_3_dvh.csv").write_text(to_csv([]))  # no metric of the patient has a band
    assert read_dvh_estimate(tmp_path, "pt_3") == []


def test_error_by_decile_and_rank_correlation_on_a_known_case():
    rng = np.random.default_rng(0)
    std = rng.permutation(1000).astype(np.float32)  # 0..999 in any order
    error = np.floor(std / 100.0) * 2.0  # decile k has error 2k
    d = error_by_decile(std, error)
    assert d["mean_abs_error_gy"] == [2.0 * k for k in range(10)]
    assert d["std_edges_gy"] == [100.0 * k for k in range(10)] + [999.0] and d["voxels"] == 1000
    # 1003 voxels: groups of 101, 100, ...: equal counts to within one
    d = error_by_decile(np.arange(1003.0), np.arange(1003.0))
    assert d["mean_abs_error_gy"][0] == 50.0 and d["std_edges_gy"][1] == 101.0
    assert rank_correlation(std, np.exp(std / 100)) == pytest.approx(1.0)  # monotone: rho 1
    assert rank_correlation(std, -std) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(std, np.ones_like(std)))


# ---------------------------------------------------------------- the report


def _svg(text: str, element_id: str) -> str:
    m = re.search(rf"id='{element_id}'[^>]*src='data:image/svg\+xml;base64,([^']+)'", text)
    assert m, element_id
    return base64.b64decode(m.group(1)).decode()


def test_report_draws_the_bands_and_flags_wide_structures(bands_folder, examples_dir, tmp_path):
    root, _ = bands_folder
    out = tmp_path / "report.html"
    r = invoke("report", "--pred", root / "pred", "--ref", examples_dir / "pt_204", "--out", out)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "<h3>DVH estimate</h3>" in text and "id='dvh-estimate-pt_204'" in text
    svg = _svg(text, "dvh-estimate-pt_204")
    # the bands shaded, the 80 % band darker than the 95 % band; the reference DVH drawn; PTV70 flagged
    assert "fill-opacity: 0.45" in svg and "fill-opacity: 0.2" in svg
    assert "80 % band" in svg and "95 % band" in svg and "reference DVH" in svg
    assert "PTV70  \u25b2 wide" in svg and "SpinalCord  \u25b2 wide" not in svg
    # the wide flag and what it means, in the page and in the cohort table
    note = re.search(r"<p class='note wide-note'>(.*?)</p>", text).group(1)
    assert note.startswith("<span class='wide-flag'>wide</span> PTV70.") and "more than 1.5 times as wide" in note
    cohort = re.search(r"<table id='cohort-table'.*?</table>", text).group(0)
    assert "Wide DVH bands" in cohort and "<span class='wide-flag'>wide</span> PTV70</td>" in cohort
    # the DVH metrics' bands as a table; a reference outside the 80 % band is marked
    table = re.search(r"<table id='estimate-pt_204'.*?</table>", text).group(0)
    rows, _ = estimate_rows(read_patient(examples_dir / "pt_204", load_ct=False), wide="PTV70")
    first = next(r for r in rows if r["structure"] == "PTV70" and r["metric"] == "D_95")
    assert (f"data-band='PTV70 D95 80'>{first['lower_80']:.2f} to {first['upper_80']:.2f}<") in table
    n_gy = sum(r["unit"] == "Gy" for r in rows)
    assert table.count("class='outside'") == n_gy // 2  # every other DVH metric row's band misses
    assert "V_30Gy" not in table  # curve points are drawn, not tabled


def test_report_refuses_a_malformed_dvh_estimate_before_drawing(bands_folder, examples_dir, tmp_path):
    root, _ = bands_folder
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(root / "pred" / "pt_204.nii.gz", pred)
    (pred / "pt_204_dvh.csv").write_text("structure,metric,unit,predicted\nPTV70,D_95,Gy,70\n")
    out = tmp_path / "report.html"
    r = invoke("report", "--pred", pred, "--ref", examples_dir / "pt_204", "--out", out)
    assert r.exit_code == 1 and not out.exists()
    errors = [line for line in r.output.splitlines() if line.strip()]
    assert len(errors) == 1 and "pt_204_dvh.csv" in errors[0] and "not a DVH estimate" in errors[0], r.output


def test_report_page_with_an_estimate_and_no_reference():
    """`rtgen predict --report` passes the estimate to `ReportPage.add`: a new patient, no reference."""
    from rtgen.data.records import Patient
    from rtgen.evaluation.report import ReportPage

    shape = (20, 20, 12)
    dose = np.zeros(shape, np.float32)
    dose[5:15, 5:15, 3:9] = 60.0
    dose[7:13, 7:13, 4:8] = 70.0
    pdm = dose > 0
    ptv = np.zeros(shape, bool)
    ptv[7:13, 7:13, 4:8] = True
    cord = np.zeros(shape, bool)
    cord[5:9, 5:15, 3:9] = True
    ct = np.where(pdm, 40, -1000).astype(np.int16)
    patient = Patient("pt_1", ct, None, pdm, {"PTV70": ptv, "SpinalCord": cord}, (3.0, 3.0, 3.0))
    rows = [{"structure": "PTV70", "metric": "D_95", "unit": "Gy", "predicted": 70.0, "lower_80": 68.0,
             "upper_80": 71.0, "lower_95": 66.0, "upper_95": 72.0, "wide": False},
            {"structure": "SpinalCord", "metric": "V_65Gy", "unit": "%", "predicted": 40.0, "lower_80": 30.0,
             "upper_80": 50.0, "lower_95": 20.0, "upper_95": 60.0, "wide": True},
            {"structure": "SpinalCord", "metric": "V_70Gy", "unit": "%", "predicted": 30.0, "lower_80": 20.0,
             "upper_80": 40.0, "lower_95": 10.0, "upper_95": 50.0, "wide": False}]
    page = ReportPage()
    rep = page.add(patient, dose, dvh_estimate=rows)
    assert rep.dvh_estimate and rep.wide == ["SpinalCord"]
    text = page.html()
    assert "id='pt_1' class='patient prediction-only'" in text
    table = re.search(r"<table id='estimate-pt_1'.*?</table>", text).group(0)
    assert "reference" not in table and "data-band='PTV70 D95 95'>66.00 to 72.00<" in table
    svg = _svg(text, "dvh-estimate-pt_1")
    assert "SpinalCord  \u25b2 wide" in svg and "reference DVH" not in svg and "fill-opacity: 0.45" in svg
    assert "<span class='wide-flag'>wide</span> SpinalCord." in text
    empty = ReportPage()  # a model with bands, none of them for this patient's metrics
    assert not empty.add(patient, dose, dvh_estimate=[]).wide
    assert "No DVH metric of this patient has a band." in empty.html()

