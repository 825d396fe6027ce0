"""One self-contained HTML page a physicist can open, forward and archive: `rtgen report`.

Why a single file with everything inlined: a report is mailed, attached to a ticket or opened on a
clinic workstation without internet, so it must make no network request at all. The page carries
a Content-Security-Policy that forbids any load other than inline styles and ``data:`` images, so
a stray external reference would show as a browser error (the browser test checks there are none).

What a patient section shows: slices with isodoses of the reference, the prediction and their
difference, and the DVHs (`rtgen.evaluation.report_figures`); the scores and metric tables, a value
failing a simple review criterion marked red (`rtgen.evaluation.report_numbers`). The page is put
together here and in `rtgen.evaluation.report_html`. A prediction that comes with a DVH estimate
(`<id>_dvh.csv`, the bands of a model that gives them) also gets each structure's predicted DVH with
its bands shaded, the table of its DVH metrics' bands, and its structures whose band is wide flagged.
With a plan's dose (`rtgen report --plan`, the folder `rtgen plan` wrote), each section also gets a
"Plan" part, prediction, plan and reference side by side and the clinical criteria each meets, and
the cohort the share of criteria met by each (`rtgen.evaluation.report_plan`).

A patient without a reference dose (``patient.dose is None``: a new patient, predicted straight
from a DICOM export by ``rtgen predict --report``) gets a prediction-only section: one "Predicted"
column of slices, the prediction's DVHs (solid), its metric values without any comparison or
highlighting; the cohort table shows a dash for its scores, and the cohort scores are those of
the patients that have a reference.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rtgen import __version__
from rtgen.core.atomic import atomic_write_text
from rtgen.core.errors import DataError, OutputError
from rtgen.core.structures import STRUCTURES
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient, patients_in
from rtgen.dosimetry import OpenKBPScores
from rtgen.dosimetry.bands import read_dvh_estimate
from rtgen.dosimetry.criteria import CriteriaSet, default_criteria
from rtgen.evaluation.dose import band_pairs, find_prediction, read_prediction
from rtgen.evaluation.report_figures import (  # noqa: F401 (slice_centre: tests)
    dvh_estimate_figure,
    dvh_figure,
    slice_centre,
    slice_figure,
)
from rtgen.evaluation.report_html import CSP, CSS, _e, cohort_section, estimate_section, patient_section
from rtgen.evaluation.report_numbers import PatientReport, patient_numbers
from rtgen.evaluation.report_plan import judge, plan_cohort, plan_part, read_plans_table


class ReportPage:
    """A report built one patient at a time: `add` draws the patient's figures at once and keeps only
    its HTML, so a caller that has each patient in memory anyway (`rtgen predict --report`) needs
    neither to keep the volumes nor to read them again. `html()` or `write()` when all are added."""

    def __init__(self, gamma: bool = False, title: str = "rtgen dose report", sources: dict[str, str] | None = None,
                 criteria: CriteriaSet | None = None):
        self.gamma, self.title, self.sources = gamma, title, sources
        self.criteria = criteria or default_criteria()  # what the plan parts judge
        self.scores = OpenKBPScores()
        self.reports: list[PatientReport] = []
        self.sections: list[str] = []
        self.judged: list[dict] = []  # per patient with a plan: dose kind -> CriteriaResult

    def __len__(self) -> int:
        return len(self.reports)

    def add(self, patient: Patient, prediction: np.ndarray, dvh_estimate: list[dict] | None = None,
            plan: np.ndarray | tuple[np.ndarray, dict | None] | None = None) -> PatientReport:
        """Add one patient (its `dose` the reference, or None: a prediction-only section) and its prediction;
        with `dvh_estimate` (rows of `<id>_dvh.csv`, as `rtgen.dosimetry.bands.DVHBands.table` gives them),
        also each structure's predicted DVH with its bands shaded and the structures whose band is wide.
        With `plan`, a plan's delivered dose on the patient's grid, or (that dose, its row of plans.csv as
        a dict): the "Plan" part, the three doses side by side and the criteria each meets."""
        if np.shape(prediction) != tuple(patient.grid):
            raise DataError(patient.id, f"predicted dose shape {np.shape(prediction)} differs from the "
                                        f"reference grid {tuple(patient.grid)}")
        plan_dose, plan_row = plan if isinstance(plan, tuple) else (plan, None)
        judged = None
        if plan_dose is not None:  # judged before any number is kept: a bad dose leaves no half-added patient
            if np.shape(plan_dose) != tuple(patient.grid):
                raise DataError(patient.id, f"plan dose shape {np.shape(plan_dose)} differs from the "
                                            f"reference grid {tuple(patient.grid)}")
            judged = judge(patient, prediction, plan_dose, self.criteria)
        pairs = None
        if dvh_estimate is not None:  # before any number is kept: a bad row leaves no half-added patient
            pairs = (band_pairs(dvh_estimate, patient, patient.id) if patient.dose is not None
                     else [(row, None) for row in dvh_estimate])
        rep = patient_numbers(patient, prediction, self.scores, gamma=self.gamma)
        estimate = ""
        if pairs is not None:
            rep.dvh_estimate = True
            rep.wide = [n for n in STRUCTURES if any(row["structure"] == n and row.get("wide") for row, _ in pairs)]
            estimate = (estimate_section(rep, pairs, dvh_estimate_figure(patient, prediction, dvh_estimate)) if pairs
                        else "<h3>DVH estimate</h3><p class='note'>No DVH metric of this patient has a band.</p>")
        part = ""
        if judged is not None:
            part = plan_part(patient.id, patient.dose is not None, judged, self.criteria.name,
                             slice_figure(patient, prediction, plan_dose), dvh_figure(patient, prediction, plan_dose),
                             plan_row)
            self.judged.append(judged)
        section = patient_section(rep, slice_figure(patient, prediction), dvh_figure(patient, prediction), estimate,
                                  part)
        self.reports.append(rep)
        self.sections.append(section)
        return rep

    def html(self) -> str:
        reports = self.reports
        if not reports:
            raise DataError("report", "no patients to report on")
        when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        src = "".join(f"<p>{_e(k)}: {_e(v)}</p>" for k, v in (self.sources or {}).items())
        nav = " ".join(f"<a href='#{_e(r.patient_id)}'>{_e(r.patient_id)}</a>" for r in reports)
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(self.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{_e(self.title)}</h1>{src}<p>{len(reports)} patient(s) &middot; rtgen "
            f"{_e(__version__)} &middot; {when}</p></header><main><nav><p>Patients: {nav}</p></nav>"
            f"{cohort_section(reports, self.scores, self.gamma, plan_cohort(self.judged, self.criteria.name))}"
            f"{''.join(self.sections)}</main></body></html>\n"
        )

    def write(self, out_html: str | Path) -> Path:
        """Write the page to `out_html` (atomically: the file appears only when complete)."""
        out = check_report_path(out_html)
        return _write(out, self.html())


def render_report(cases: Iterable[tuple[Patient, np.ndarray]], gamma: bool = False, title: str = "rtgen dose report",
                  sources: dict[str, str] | None = None, estimates: dict[str, list[dict]] | None = None) -> str:
    """The HTML of a report on (patient, predicted dose) pairs; the patient's dose is the reference,
    and a patient without one (`dose` None) gets a prediction-only section. `estimates`: patient id ->
    the rows of its DVH estimate (`<id>_dvh.csv`), drawn as bands where given.

    Patients are consumed one at a time (an iterator keeps one patient's volumes in memory)."""
    page = ReportPage(gamma=gamma, title=title, sources=sources)
    for patient, prediction in cases:
        page.add(patient, prediction, (estimates or {}).get(patient.id))
    return page.html()


def check_report_path(out_html: str | Path) -> Path:
    """Fail early, before any rendering, if `out_html` cannot become a file (nothing is created here)."""
    out = Path(out_html)
    if out.is_dir():
        raise OutputError(out, "cannot be written: it is a folder; give the report a file name such as report.html")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(out, f"cannot be written: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(out, f"cannot be written: no permission to write in {parent}")
            break
    return out


def _write(out: Path, text: str) -> Path:
    try:
        atomic_write_text(out, text)  # creates missing folders; raises OutputError on disk errors
    except OSError as e:
        raise OutputError(out, f"cannot be written ({e.strerror or e})") from None
    return out


def write_report_cases(cases: Iterable[tuple[Patient, np.ndarray]], out_html: str | Path, gamma: bool = False,
                       title: str = "rtgen dose report", sources: dict[str, str] | None = None) -> Path:
    """Write the report of already-loaded (patient, predicted dose) pairs; nothing is written on failure.

    A patient whose `dose` is None (no reference) gets a prediction-only section."""
    out = check_report_path(out_html)
    return _write(out, render_report(cases, gamma=gamma, title=title, sources=sources))


def write_report(pred_dir: str | Path, ref_dir: str | Path, out_html: str | Path, gamma: bool = False,
                 title: str = "rtgen dose report", plan_dir: str | Path | None = None,
                 criteria: CriteriaSet | None = None) -> Path:
    """Report on every reference patient of `ref_dir` (a split folder or one patient) against its
    prediction in `pred_dir`.

    Predictions are found as `rtgen evaluate` finds them (pt_N.csv, pt_N.nii.gz, pt_N/dose.csv); a
    DVH estimate beside one (`pt_N_dvh.csv`, as `rtgen predict` writes it for a model with bands) is
    drawn as each structure's predicted DVH with its bands shaded. With `plan_dir`, a folder that
    `rtgen plan` wrote, each patient's delivered dose is found there the same way and shown beside the
    prediction and the reference, judged on `criteria` (default: OpenKBP-Opt's), with its row of
    plans.csv where there is one.
    All inputs are checked before any figure is drawn; the file appears only when complete."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    out = check_report_path(out_html)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder not found" if not pred_dir.exists() else "is not a folder")
    plan_dir = None if plan_dir is None else Path(plan_dir)
    plans, plan_rows = {}, {}
    if plan_dir is not None:
        if not plan_dir.is_dir():
            raise DataError(plan_dir, "plan folder not found" if not plan_dir.exists() else "is not a folder")
        plan_rows = read_plans_table(plan_dir)
    refs = patients_in(ref_dir)  # a split folder or one patient
    found, estimates = {}, {}
    for path in refs:
        pid = path.name.removesuffix(".npz")
        found[pid] = find_prediction(pred_dir, pid)
        if found[pid] is None:
            raise DataError(pred_dir, f"no prediction for patient {pid} (expected {pid}.csv or {pid}.nii.gz)")
        if (rows := read_dvh_estimate(pred_dir, pid)) is not None:  # a malformed one fails here, named
            estimates[pid] = rows
        if plan_dir is not None:
            plans[pid] = find_prediction(plan_dir, pid)
            if plans[pid] is None:
                raise DataError(plan_dir, f"no plan dose for patient {pid} (expected {pid}.csv, {pid}.nii.gz or "
                                          f"{pid}_RTDOSE.dcm, as rtgen plan writes them)")

    sources = {"predictions": str(pred_dir.resolve()), "reference": str(ref_dir.resolve())}
    if plan_dir is not None:
        sources["plans"] = str(plan_dir.resolve())
    page = ReportPage(gamma=gamma, title=title, sources=sources, criteria=criteria)
    for path in refs:  # one patient's volumes in memory at a time
        pid = path.name.removesuffix(".npz")
        patient = load_patient(path)
        if patient.dose is None:
            raise DataError(path, "reference patient has no dose")
        prediction = read_prediction(found[pid], patient.grid, path, patient.possible_dose_mask)
        plan = None
        if plan_dir is not None:
            plan = (read_prediction(plans[pid], patient.grid, path, patient.possible_dose_mask), plan_rows.get(pid))
        page.add(patient, prediction, estimates.get(pid), plan=plan)
    return _write(out, page.html())

