"""`rtgen report --plan`: each patient's plan beside its prediction and reference, and the criteria met.

Two tiny patients (24 x 24 x 16 voxels, a few seconds for the whole module), written as .npz
caches; the prediction is the reference 2 % hot, the "plan" the reference scaled by 0.88, so the
plan fails the PTVs' D99 >= 90 % of the prescription where the reference meets it. pt_2 lacks the
larynx and the PTV56, so some criteria are not applicable. The expected met/failed values come from
`default_criteria()` evaluated directly on each dose.
"""

from __future__ import annotations

import csv
import html
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.data.records import Patient
from rtgen.data.sources.npz import write_npz
from rtgen.dosimetry.criteria import default_criteria, pooled_share
from rtgen.inference.writers import write_dose

runner = CliRunner()
SHAPE = (24, 24, 16)
SPACING = (3.0, 3.0, 3.0)
PRED_SCALE, PLAN_SCALE = 1.02, 0.88
KINDS = ("reference", "predicted", "plan")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_patient(pid: str, larynx: bool) -> Patient:
    """A PTV70 inside a PTV56, a spinal cord and a brainstem near them, a larynx when asked."""
    zz = np.indices(SHAPE)
    centre = np.array([12, 12, 8])[:, None, None, None]
    r = np.sqrt((((zz - centre) * 3.0) ** 2).sum(0))  # mm from the centre
    ptv70, ptv56 = r <= 9.0, r <= 18.0
    dose = np.where(ptv70, 71.0, np.where(ptv56, 59.0, 60.0 * np.exp(-(r - 18.0) / 12.0))).astype(np.float32)
    pdm = r <= 33.0
    dose = np.where(pdm, dose, 0).astype(np.float32)
    structures = {"PTV70": ptv70, "SpinalCord": np.zeros(SHAPE, bool), "Brainstem": np.zeros(SHAPE, bool)}
    structures["SpinalCord"][18:21, 11:14, 2:14] = True
    structures["Brainstem"][4:7, 10:14, 2:5] = True
    if larynx:
        structures["PTV56"] = ptv56 & ~ptv70
        structures["Larynx"] = np.zeros(SHAPE, bool)
        structures["Larynx"][10:14, 3:6, 6:10] = True
    ct = np.where(pdm, 40, -1000).astype(np.int16)
    return Patient(pid, ct, dose, pdm, structures, SPACING)


PATIENTS = [tiny_patient("pt_1", larynx=True), tiny_patient("pt_2", larynx=False)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """ref/ (two .npz caches), pred/ and plans/ (NIfTI doses and a plans.csv, as rtgen plan writes them)."""
    root = tmp_path_factory.mktemp("report_plan")
    rows = []
    for i, p in enumerate(PATIENTS):
        write_npz(p, root / "ref" / f"{p.id}.npz")
        write_dose(root / "pred", p.id, p.dose * PRED_SCALE, p.spacing, fmt="nifti")
        write_dose(root / "plans", p.id, p.dose * PLAN_SCALE, p.spacing, fmt="nifti")
        rows.append({"patient": p.id, "beams": 9, "mae_to_input_gy": 1.234 + i, "mae_to_input_sequenced_gy": 1.5 + i,
                     "segments": 80 + i, "mu_per_fraction": 512.3 + i})
    with open(root / "plans" / "plans.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def page(folders):
    out = folders / "out" / "report.html"
    r = invoke("report", "--pred", folders / "pred", "--ref", folders / "ref", "--plan", folders / "plans",
               "--out", out)
    assert r.exit_code == 0, r.output
    return out


def expected(p: Patient) -> dict:
    card = default_criteria()
    doses = {"reference": p.dose, "predicted": p.dose * PRED_SCALE, "plan": p.dose * PLAN_SCALE}
    return {k: card.evaluate(d, p.structures, p.voxel_volume_mm3) for k, d in doses.items()}


def test_each_patient_gets_a_plan_part_with_three_columns(page):
    text = page.read_text()
    for p in PATIENTS:
        part = re.search(rf"<div id='plan-{p.id}' class='plan'>.*?</div>", text, re.S).group(0)
        assert f"alt='{p.id}: reference, predicted and plan dose, axial" in part
        assert "reference solid, prediction dashed, plan dotted" in part
        table = re.search(rf"<table id='plan-criteria-{p.id}'.*?</table>", part).group(0)
        assert [h for h in re.findall(r"<th colspan='2'>(\w+)</th>", table)] == ["Reference", "Predicted", "Plan"]
        # the plans.csv row: MAE before/after sequencing, segments, MU per fraction
        numbers = re.search(rf"<table id='plan-numbers-{p.id}'.*?</table>", part).group(0)
        i = PATIENTS.index(p)
        for key, value in (("mae_to_input_gy", f"{1.234 + i:.2f}"), ("mae_to_input_sequenced_gy", f"{1.5 + i:.2f}"),
                           ("segments", f"{80 + i}"), ("mu_per_fraction", f"{512.3 + i:.1f}")):
            assert f"data-plan='{key}'>{value}<" in numbers
    # the slices: three dose columns (12 in at 90 dpi), the same width as reference | predicted | difference
    from io import BytesIO

    from PIL import Image
    from test_report import _data_uri_bytes

    assert Image.open(BytesIO(_data_uri_bytes(text, "plan-slices-pt_1"))).size[0] == 1080
    dvh = _data_uri_bytes(text, "plan-dvh-pt_1").decode()
    assert "plan dotted" in dvh and ">plan<" in dvh and ">predicted<" in dvh and ">reference<" in dvh


def test_criteria_cells_equal_the_criteria_evaluated_directly(page):
    text = page.read_text()
    seen = {"met": 0, "failed": 0, "\u2014": 0}
    for p in PATIENTS:
        table = re.search(rf"<table id='plan-criteria-{p.id}'.*?</table>", text).group(0)
        cells = {(html.unescape(c), k): (cls, t) for cls, c, k, t in re.findall(
            r"<td class='(ok|fail|na)' data-criterion='([^']*)' data-dose='(\w+)'>([^<]*)</td>", table)}
        judged = expected(p)
        assert len(cells) == 3 * len(default_criteria().criteria)
        for kind in KINDS:
            for row in judged[kind].rows:
                cls, shown = cells[(row.label, kind)]
                want = {True: ("ok", "met"), False: ("fail", "failed"), None: ("na", "\u2014")}[row.met]
                assert (cls, shown) == want, (p.id, kind, row.label)
                seen[shown] += 1
            total = re.search(rf"<td colspan='2' data-dose='{kind}'>(\d+) of (\d+)</td>", table)
            assert (int(total.group(1)), int(total.group(2))) == (judged[kind].n_met, judged[kind].n_applicable)
    assert all(seen.values()), seen  # the case shows each outcome
    # the reference meets the PTV70 coverage criterion, the 12 %-cold plan fails it
    assert expected(PATIENTS[0])["plan"].rows[-1].met is False and expected(PATIENTS[0])["reference"].rows[-1].met


def test_cohort_shares_are_pooled(page):
    text = page.read_text()
    cohort = re.search(r"<table id='plan-criteria-cohort'.*?</table>", text).group(0)
    judged = [expected(p) for p in PATIENTS]
    for kind in KINDS:
        results = [j[kind] for j in judged]
        share = pooled_share(results)
        met, n = sum(r.n_met for r in results), sum(r.n_applicable for r in results)
        assert f"data-dose='{kind}'>{100 * share:.1f} % ({met} of {n})</td>" in cohort, kind
    assert "Reference (2 patients)" in cohort and "Plan (2 patients)" in cohort


def test_page_with_plans_loads_nothing_external(page):
    text = page.read_text()
    refs = re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", text)
    assert refs and all(u.startswith(("data:", "#")) for u in refs), {u[:40] for u in refs}
    assert "http://" not in text and "https://" not in text and "Content-Security-Policy" in text


def test_page_with_plans_in_the_browser(page):
    from test_report import assert_drawn, browse

    found = browse(page)
    assert found["errors"] == [] and found["failed"] == [] and found["requests"] == [page.as_uri()]
    ids = sorted(i["id"] for i in found["images"])
    assert ids == sorted(f"{kind}-{p.id}" for p in PATIENTS for kind in ("slices", "dvh", "plan-slices", "plan-dvh"))
    assert_drawn(found)
    tables = {t["id"]: t for t in found["tables"]}
    assert tables["plan-criteria-cohort"]["visible"] and tables["plan-criteria-pt_1"]["visible"]


def test_missing_plan_dose_is_one_line_naming_patient_and_folder(folders, tmp_path):
    plans = tmp_path / "plans_missing"
    write_dose(plans, "pt_1", PATIENTS[0].dose, SPACING, fmt="nifti")  # pt_2's plan is missing
    out = tmp_path / "r.html"
    r = invoke("report", "--pred", folders / "pred", "--ref", folders / "ref", "--plan", plans, "--out", out)
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "plans_missing" in lines[0] and "no plan dose for patient pt_2" in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()


def test_criteria_file_replaces_the_default_set(folders, tmp_path):
    crit = tmp_path / "clinic.json"
    crit.write_text('{"name": "my clinic", "criteria": [{"structure": "SpinalCord", "metric": "D0.1cc", "max_gy": 45}]}')
    out = tmp_path / "r.html"
    r = invoke("report", "--pred", folders / "pred", "--ref", folders / "ref" / "pt_2.npz", "--plan",
               folders / "plans", "--criteria-file", crit, "--out", out)
    assert r.exit_code == 0, r.output
    table = re.search(r"<table id='plan-criteria-pt_2'.*?</table>", out.read_text()).group(0)
    assert "Clinical criteria (my clinic)" in out.read_text()
    assert len(re.findall(r"data-criterion=", table)) == 3 and "SpinalCord D0.1cc &lt;= 45 Gy" in table
    r = invoke("report", "--pred", folders / "pred", "--ref", folders / "ref", "--criteria-file", crit,
               "--out", tmp_path / "r2.html")
    assert r.exit_code == 1 and "--plan" in r.output and len(r.output.strip().splitlines()) == 1


def test_plan_without_reference_shows_prediction_and_plan():
    """The Python API: a patient without a reference dose, its plan given with a plans.csv row."""
    from rtgen.evaluation.report import ReportPage

    ref = PATIENTS[0]
    patient = Patient("pt_9", ref.ct, None, ref.possible_dose_mask, ref.structures, SPACING)
    page = ReportPage()
    page.add(patient, ref.dose, plan=(ref.dose * PLAN_SCALE, {"patient": "pt_9", "segments": "77"}))
    text = page.html()
    part = re.search(r"<div id='plan-pt_9' class='plan'>.*?</div>", text, re.S).group(0)
    assert "alt='pt_9: predicted and plan dose, axial" in part and "prediction dashed, plan dotted" in part
    table = re.search(r"<table id='plan-criteria-pt_9'.*?</table>", part).group(0)
    assert re.findall(r"<th colspan='2'>(\w+)</th>", table) == ["Predicted", "Plan"]
    assert "data-dose='reference'" not in table and "data-plan='segments'>77<" in part
    cohort = re.search(r"<table id='plan-criteria-cohort'.*?</table>", text).group(0)
    assert "Reference (0 patients)" in cohort and "data-dose='reference'>\u2014<" in cohort
    with pytest.raises(Exception, match="plan dose shape"):
        page.add(patient, ref.dose, plan=ref.dose[:-1])
    assert len(page) == 1  # the bad plan left no half-added patient
