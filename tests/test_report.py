"""`rtgen report` rendered in a real browser: headless Chromium (Debian's package, which `.ci/run`
installs) driven by Playwright, which uses that binary and never downloads one.

Numbers can be right and the page still blank: an image that does not decode, a figure drawn
white on white, a stylesheet that hides the table. So the test looks at pixels: a full-page
screenshot, cropped to each slice image and DVH plot, must vary inside the box. The page must also
be self-contained (no request other than the file itself and data: URIs) and quiet (no console
error, no page error, no failed request).

References are the two bundled patients; predictions are their doses, blurred and scaled, so the
expected highlighting is known: pt_204 (scaled by 1.005) passes every criterion, pt_219 (+8 %)
fails PTV70 D95 (+5.5 Gy > 3 % of 70 Gy). (`PERTURB` can blur too, to try the difference maps.)
"""

from __future__ import annotations

import io
import os
import re
import shutil

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.data import read_patient
from rtgen.inference.writers import write_dose

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PERTURB = {"pt_204": (0.0, 1.005), "pt_219": (0.0, 1.08)}  # blur sigma (voxels), scale


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def report(tmp_path_factory, examples_dir):
    """The report of the two bundled patients against perturbed copies of their doses, via the CLI."""
    root = tmp_path_factory.mktemp("report")
    for pid, (sigma, scale) in PERTURB.items():
        p = read_patient(examples_dir / pid, load_ct=False)
        dose = gaussian_filter(p.dose, sigma) if sigma else p.dose
        write_dose(root / "pred", pid, dose * scale, p.spacing, fmt="nifti")
    r = invoke("report", "--pred", root / "pred", "--ref", examples_dir, "--out", root / "out" / "report.html")
    assert r.exit_code == 0, r.output
    path = root / "out" / "report.html"
    assert "report.html" in r.output
    return path


def test_report_is_one_self_contained_file(report):
    path = report
    text = path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no side files, no temporary left
    assert path.stat().st_size < 5_000_000
    # every resource inline: no src/href that is not a data: URI or an in-page anchor
    refs = re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", text)
    assert refs and all(u.startswith(("data:", "#")) for u in refs), {u[:40] for u in refs}
    assert "http://" not in text and "https://" not in text
    assert "Content-Security-Policy" in text
    for pid in PERTURB:
        for element in (f"id='{pid}'", f"id='slices-{pid}'", f"id='dvh-{pid}'", f"id='metrics-{pid}'",
                        f"href='#{pid}'"):
            assert element in text
    assert "id='cohort-table'" in text


@pytest.fixture(scope="module")
def browser_page(report):
    """The report loaded in headless Chromium: its screenshot, messages, requests and element boxes."""
    found = browse(report)
    if os.environ.get("RTGEN_REPORT_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(found["screenshot"], os.environ["RTGEN_REPORT_SCREENSHOT"])
    return found


def browse(path) -> dict:
    """Load a report in headless Chromium: its screenshot, messages, requests and element boxes."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (CI installs Debian's chromium; locally: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    shot = path.parent.parent / "report.png"
    found: dict = {"errors": [], "requests": [], "failed": []}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("console", lambda m: m.type == "error" and found["errors"].append(f"console: {m.text}"))
            page.on("pageerror", lambda e: found["errors"].append(f"page error: {e}"))
            page.on("request", lambda r: found["requests"].append(r.url))
            page.on("requestfailed", lambda r: found["failed"].append(f"{r.url[:80]}: {r.failure}"))
            page.goto(path.as_uri(), wait_until="load")
            found["images"] = page.evaluate(
                """() => [...document.querySelectorAll('img.slice-img, img.dvh-plot')].map(img => {
                    const b = img.getBoundingClientRect();
                    return {id: img.id, complete: img.complete, natural: img.naturalWidth,
                            box: [b.left + window.scrollX, b.top + window.scrollY, b.width, b.height]};
                })""")
            found["fail_cells"] = page.evaluate(
                """() => [...document.querySelectorAll('td.fail')].map(td => ({
                    table: td.closest('table').id, metric: td.dataset.metric || '', text: td.textContent,
                    background: getComputedStyle(td).backgroundColor}))""")
            found["tables"] = page.evaluate(
                """() => [...document.querySelectorAll('table.metrics')].map(t => ({
                    id: t.id, rows: t.rows.length, visible: t.getBoundingClientRect().height > 0}))""")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    found["screenshot"] = shot
    print(f"report screenshot: {shot}")
    return found


def test_browser_shows_no_errors_and_loads_nothing_external(browser_page, report):
    path = report
    assert browser_page["errors"] == []
    assert browser_page["failed"] == []
    assert browser_page["requests"] == [path.as_uri()]
    assert all(u.startswith(("file:", "data:")) for u in browser_page["requests"])


def test_images_and_dvh_plots_are_drawn(browser_page):
    images = browser_page["images"]
    assert sorted(i["id"] for i in images) == sorted(f"{kind}-{pid}" for pid in PERTURB for kind in ("slices", "dvh"))
    assert_drawn(browser_page)


def assert_drawn(found: dict) -> None:
    """Every slice image and DVH plot decoded, is drawn large enough, and is not blank."""
    from PIL import Image

    screenshot = Image.open(found["screenshot"]).convert("L")
    for img in found["images"]:
        assert img["complete"] and img["natural"] > 0, f"{img['id']} did not decode"
        x, y, w, h = img["box"]
        assert w > 300 and h > 200, f"{img['id']} is drawn too small: {w:.0f} x {h:.0f} px"
        crop = np.asarray(screenshot.crop((int(x), int(y), int(x + w), int(y + h))), np.float64)
        assert crop.std() > 20, f"{img['id']} looks blank (pixel std {crop.std():.1f})"
        # not one flat colour anywhere: each quarter of the box holds drawing too
        for q in (crop[: crop.shape[0] // 2], crop[crop.shape[0] // 2:]):
            assert q.std() > 5, f"half of {img['id']} is blank"


def test_metric_tables_highlight_failing_criteria(browser_page):
    tables = {t["id"]: t for t in browser_page["tables"]}
    for tid in ("cohort-table", "metrics-pt_204", "indices-pt_204", "metrics-pt_219", "indices-pt_219"):
        assert tid in tables and tables[tid]["visible"] and tables[tid]["rows"] >= 3, tid
    fails = browser_page["fail_cells"]
    # pt_204 is within 0.5 % of its plan: nothing highlighted; pt_219, 8 % hot: its PTV70 D95 is
    assert not [f for f in fails if f["table"].endswith("pt_204")]
    d95 = [f for f in fails if f["table"] == "metrics-pt_219" and f["metric"] == "PTV70 D95"]
    assert len(d95) == 1 and float(d95[0]["text"]) > 2.1
    assert {f["background"] for f in fails} == {"rgb(251, 213, 213)"}  # the highlight colour is applied
    cohort = [f for f in fails if f["table"] == "cohort-table"]
    assert len(cohort) == 1 and "PTV70 D95" in cohort[0]["text"]


def test_report_missing_prediction_folder_is_one_line(tmp_path, examples_dir):
    r = invoke("report", "--pred", tmp_path / "nowhere", "--ref", examples_dir, "--out", tmp_path / "r.html")
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0] and "prediction folder not found" in lines[0]
    assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_report_missing_patient_prediction_names_it(tmp_path, examples_dir):
    p = read_patient(examples_dir / "pt_204", load_ct=False)
    write_dose(tmp_path / "pred", "pt_204", p.dose, p.spacing)
    r = invoke("report", "--pred", tmp_path / "pred", "--ref", examples_dir, "--out", tmp_path / "r.html")
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1 and "no prediction for patient pt_219" in r.output
    assert not (tmp_path / "r.html").exists()


def test_report_unwritable_out_writes_nothing(tmp_path, examples_dir):
    p = read_patient(examples_dir / "pt_204", load_ct=False)
    write_dose(tmp_path / "pred", "pt_204", p.dose, p.spacing)
    (tmp_path / "afile").write_text("not a folder")
    before = sorted(str(q) for q in tmp_path.rglob("*"))
    r = invoke("report", "--pred", tmp_path / "pred", "--ref", examples_dir / "pt_204",
               "--out", tmp_path / "afile" / "sub" / "report.html")
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0] and "is a file, not a folder" in lines[0]
    assert sorted(str(q) for q in tmp_path.rglob("*")) == before


def test_gamma_row_and_centre_without_a_ptv():
    """A tiny patient without PTVs: slices centre on the possible dose mask; gamma is reported."""
    from rtgen.data.records import Patient
    from rtgen.evaluation.report import render_report, slice_centre

    shape = (24, 28, 16)
    zz = np.indices(shape)
    centre = np.array([12, 14, 8])[:, None, None, None]
    r2 = (((zz - centre) * np.array([2.0, 2.0, 3.0])[:, None, None, None]) ** 2).sum(0)
    dose = (60.0 * np.exp(-r2 / 400.0)).astype(np.float32)
    pdm = dose > 1.0
    ct = np.where(pdm, 40, -1000).astype(np.int16)
    cord = np.zeros(shape, bool)
    cord[10:14, 14:18, 2:14] = True
    patient = Patient("pt_1", ct, dose, pdm, {"SpinalCord": cord}, (2.0, 2.0, 3.0))
    assert slice_centre(patient) == (12, 14, 8)
    html = render_report([(patient, dose + 10.0 * pdm)], gamma=True)
    assert "Gamma pass rate" in html
    assert re.search(r"class='fail' data-metric='gamma'", html)  # 10 Gy hot fails 3 %/3 mm
    assert "SpinalCord" in html and "prescription 70 Gy" in html


# ---------------------------------------------------------------- a patient without a reference dose


def _data_uri_bytes(text: str, element_id: str) -> bytes:
    import base64

    m = re.search(rf"id='{element_id}'[^>]*src='data:[^;]+;base64,([^']+)'", text)
    assert m, element_id
    return base64.b64decode(m.group(1))


@pytest.fixture(scope="module")
def prediction_only_report(tmp_path_factory, examples_dir):
    """A report on pt_204 read without its dose (a new patient): the prediction only."""
    from rtgen.evaluation.report import write_report_cases

    root = tmp_path_factory.mktemp("prediction_only")
    patient = read_patient(examples_dir / "pt_204", load_dose=False)
    assert patient.dose is None
    prediction = read_patient(examples_dir / "pt_204", load_ct=False).dose * 1.005
    return write_report_cases([(patient, prediction)], root / "out" / "report.html", title="new patient")


def test_prediction_only_report_has_no_comparison(prediction_only_report):
    from PIL import Image

    text = prediction_only_report.read_text()
    assert "id='pt_204' class='patient prediction-only'" in text
    assert "No reference dose: values are the prediction's." in text
    assert "alt='pt_204: predicted dose, axial" in text and "difference" not in text
    # one "Predicted" column (8 in at 90 dpi), not reference | predicted | difference (12 in)
    width, height = Image.open(io.BytesIO(_data_uri_bytes(text, "slices-pt_204"))).size
    assert width == 720 and height > width
    dvh = _data_uri_bytes(text, "dvh-pt_204").decode()
    assert "DVH of the prediction" in dvh and "stroke-dasharray" not in dvh  # solid curves only
    # the prediction's values, no reference column, no delta, nothing highlighted
    table = re.search(r"<table id='metrics-pt_204'.*?</table>", text).group(0)
    assert "<th>D95 (Gy)</th>" in table and "<th>D0.1cc (Gy)</th>" in table and "ref" not in table
    d95 = re.search(r"data-metric='PTV70 D95'>([\d.]+)<", table)
    assert d95 and 66.0 < float(d95.group(1)) < 74.0  # the plan scaled by 1.005: about 70 Gy
    indices = re.search(r"<table id='indices-pt_204'.*?</table>", text).group(0)
    assert "data-metric='HI PTV70'" in indices and "data-metric='CI PTV70'" in indices
    assert "Dose score" not in indices
    assert "class='fail'" not in text and "&Delta;" not in text
    # the cohort: a dash for the scores, no cohort mean (no patient has a reference), no criteria
    cohort = re.search(r"<table id='cohort-table'.*?</table>", text).group(0)
    assert cohort.count("<td class='no-reference'>\u2014</td>") == 2 and "no reference dose" in cohort
    assert "class='mean'" not in cohort and "class='criteria'" not in text


def test_prediction_only_report_in_the_browser(prediction_only_report):
    found = browse(prediction_only_report)
    assert found["errors"] == [] and found["failed"] == []
    assert found["requests"] == [prediction_only_report.as_uri()]
    assert sorted(i["id"] for i in found["images"]) == ["dvh-pt_204", "slices-pt_204"]
    assert_drawn(found)
    assert found["fail_cells"] == []
    tables = {t["id"]: t for t in found["tables"]}
    assert tables["metrics-pt_204"]["visible"] and tables["metrics-pt_204"]["rows"] >= 4


def test_cohort_scores_leave_out_patients_without_a_reference():
    """Tiny patients: one with a reference dose, one without; the cohort score is the first's."""
    from rtgen.data.records import Patient
    from rtgen.evaluation.report import render_report

    shape = (20, 20, 12)
    dose = np.zeros(shape, np.float32)
    dose[5:15, 5:15, 3:9] = 60.0
    pdm = dose > 0
    ptv = np.zeros(shape, bool)
    ptv[7:13, 7:13, 4:8] = True
    ct = np.where(pdm, 40, -1000).astype(np.int16)
    with_ref = Patient("pt_1", ct, dose, pdm, {"PTV70": ptv}, (3.0, 3.0, 3.0))
    without = Patient("pt_2", ct, None, pdm, {"PTV70": ptv}, (3.0, 3.0, 3.0))
    text = render_report([(with_ref, dose + 2.0 * pdm), (without, dose)], gamma=True)
    cohort = re.search(r"<table id='cohort-table'.*?</table>", text).group(0)
    mean = re.search(r"<tr class='mean'>(.*?)</tr>", cohort).group(1)
    assert "Cohort (1 of 2 patients with a reference dose)" in mean
    assert "<td>2.000</td>" in mean  # pt_1's dose error alone (2 Gy over its mask), not averaged with pt_2
    row = re.search(r"<tr class='patient-row'><td class='name'><a href='#pt_2'>.*?</tr>", cohort).group(0)
    assert row.count("\u2014") == 3 and "no reference dose" in row  # dose, DVH score and gamma
    assert "id='pt_1' class='patient'" in text and "id='pt_2' class='patient prediction-only'" in text


def test_predict_report_on_a_dicom_export_without_dose(tmp_path, examples_dir):
    """The README's newcomer command on a DICOM export without an RTDOSE, with the shipped default
    model: an RTDOSE and a report; an OpenKBP patient with its dose gets the usual comparison."""
    import pydicom

    export = tmp_path / "export" / "pt_204"
    r = invoke("convert", "to-dicom", examples_dir / "pt_204", export)
    assert r.exit_code == 0, r.output
    (export / "RTDOSE.dcm").unlink()  # a new patient: CT and structures only
    out = tmp_path / "OUT"
    r = invoke("predict", "--patients", export, "--out", out, "--format", "dicom", "--report")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "pt_204_RTDOSE.dcm", "pt_204_dvh.csv",
                                                     "pt_204_std.nii.gz", "report.html"]  # + DVH bands, spread
    assert "report.html" in r.output
    assert pydicom.dcmread(out / "pt_204_RTDOSE.dcm", stop_before_pixels=True).Modality == "RTDOSE"
    text = (out / "report.html").read_text()
    assert "id='pt_204' class='patient prediction-only'" in text and "No reference dose" in text
    # with a reference dose (an OpenKBP patient): compared as `rtgen report` does (any model; the fastest)
    r = invoke("predict", "--model", "hub:mamba_unet_v2_openkbp", "--patients", examples_dir / "pt_219",
               "--out", tmp_path / "OUT2", "--report")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "OUT2").iterdir()) == ["pt_219.csv", "report.html"]
    text = (tmp_path / "OUT2" / "report.html").read_text()
    assert "id='pt_219' class='patient'" in text and "reference, predicted and difference dose" in text
    assert "No reference dose" not in text and "no-reference" not in text
