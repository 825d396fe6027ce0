"""Planning on pyRadPlan's photon engine, on a tiny phantom (tests/planning_phantom.py) that the engine
computes in a few seconds: a beamlet's dose is physical, mimicking a plan's own dose recovers it, the
sequenced plan's dose is recomputed from the sequenced fluence, and `rtgen plan` writes an RTPLAN and
an RTDOSE that pass dciodvfy. Bad input gets one line. Without pyRadPlan (see the planning docs for its
install) the engine tests are skipped; the input checks still run."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from planning_phantom import phantom
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import ConfigError, DataError
from rtgen.data.records import Patient
from rtgen.planning.engine import BeamSet, Influence, check_plannable, influence_matrix, patient_origin
from rtgen.planning.optimise import Objective
from rtgen.planning.plan import PlanSettings, make_plan

pytestmark = pytest.mark.usefixtures("one_thread")
BEAMS = BeamSet(bixel_mm=8.0)
needs_engine = pytest.mark.skipif(__import__("importlib.util").util.find_spec("pyRadPlan") is None,
                                  reason="pyRadPlan not installed (see docs/planning.md)")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    pytest.importorskip("pyRadPlan")
    p = phantom()
    cache = tmp_path_factory.mktemp("influence")
    inf, cached = influence_matrix(p, BEAMS, patient_origin(p), cache)
    assert not cached
    return p, inf, cache


@pytest.fixture(scope="module")
def own_dose(case):
    """A dose the engine can deliver: smooth random beamlet weights, scaled to a 70 Gy mean in PTV70."""
    p, inf, _ = case
    w = np.random.default_rng(0).uniform(0.5, 1.5, inf.n_beamlets)
    d = inf.dose(w)
    scale = 70.0 / d[p.structures["PTV70"]].mean()
    return w * scale, d * scale


@needs_engine
def test_beamlet_dose_is_physical(case):
    p, inf, _ = case
    assert inf.matrix.min() >= 0 and inf.matrix.nnz > 0
    assert inf.gantry_angles == BEAMS.gantry_angles and inf.n_beamlets > 100
    # the central beamlet of gantry 0 (source anterior: along increasing array row i, posterior)
    cols = np.flatnonzero((inf.beam == 0) & (np.abs(inf.x_mm) < 1e-6))
    c = cols[np.argmin(np.abs(inf.y_mm[cols]))]
    w = np.zeros(inf.n_beamlets)
    w[c] = 1
    d = inf.dose(w)
    i, j, k = np.unravel_index(np.argmax(d), d.shape)
    line = d[:, j, k]
    inside = np.flatnonzero(p.possible_dose_mask[:, j, k])
    entry, depth_max = inside[0], (i - inside[0] + 0.5) * p.spacing[0]
    assert 4.0 <= depth_max <= 25.0, depth_max  # the build-up: the maximum lies 0.5-2.5 cm deep (6 MV: ~1.5 cm)
    assert line[entry] < line[i]
    beyond = line[i:inside[-1] + 1]
    assert np.all(np.diff(beyond) <= 1e-6) and beyond[-1] < 0.7 * beyond[0]  # falls off past it
    assert not d[~p.possible_dose_mask].any()  # no dose outside the body


@needs_engine
def test_mimicking_a_plans_own_dose_recovers_it(case, own_dose):
    p, inf, cache = case
    _, d0 = own_dose
    # pure voxel mimicking (this dose's random beamlet weights are as rough as a map gets: no smoothing)
    settings = PlanSettings(BEAMS, Objective(form="voxel", target_weight=0.0, hot_weight=0.0, smooth_weight=0.0,
                                             iterations=200))
    stages = []
    r = make_plan(p, d0, settings, cache_dir=cache, report=lambda stage, message: stages.append(stage))
    assert r.from_cache and stages == ["influence", "optimisation", "sequencing"]
    body = p.possible_dose_mask
    assert np.abs(r.fluence_dose - d0)[body].mean() < 0.05  # Gy, of a 70 Gy plan
    # the DVH-point form meets the DVH points it was given (one-sided: targets no colder, OARs no hotter)
    dvh = make_plan(p, d0, PlanSettings(BEAMS, Objective(form="dvh", target_weight=0.0, hot_weight=0.0,
                                                         smooth_weight=0.0, iterations=200)), cache_dir=cache)
    for name in ("PTV70", "PTV56"):
        for q in (1, 5):  # D99, D95
            assert np.percentile(dvh.fluence_dose[p.structures[name]], q) >= np.percentile(d0[p.structures[name]], q) - 0.5
    cord = p.structures["SpinalCord"]
    assert dvh.fluence_dose[cord].mean() <= d0[cord].mean() + 0.5


@needs_engine
def test_the_sequenced_plans_dose_is_recomputed_from_the_sequenced_fluence(case, own_dose):
    p, inf, cache = case
    _, d0 = own_dose
    quick = Objective(iterations=40)  # the fluence's quality does not matter here
    coarse = make_plan(p, d0, PlanSettings(BEAMS, quick, levels=3), cache_dir=cache)
    fine = make_plan(p, d0, PlanSettings(BEAMS, quick, levels=50), cache_dir=cache)
    for r in (coarse, fine):
        np.testing.assert_allclose(r.delivered_dose, inf.dose(r.sequenced.weights), rtol=1e-5, atol=1e-4)
        # the sequenced weights are the segments' fluence read at each beamlet
        for bf, seq in r.sequenced.beams:
            back = seq.delivered_on(bf.y0 + bf.bixel_mm * np.arange(bf.map.shape[0] + 1))
            np.testing.assert_allclose(r.sequenced.weights[bf.columns], back[bf.rows, bf.cols])
            assert np.abs(back - bf.map).max() <= seq.step / 2 + 1e-9
        assert r.sequenced.lost_fraction < 1e-9 and sum(r.mu()) > 0
    change = lambda r: np.abs(r.delivered_dose - r.fluence_dose)[p.possible_dose_mask].mean()
    assert change(fine) < change(coarse)  # more levels: closer to the optimised fluence
    assert fine.sequenced.n_segments > coarse.sequenced.n_segments


@needs_engine
def test_cache_is_a_plain_npz(case):
    p, inf, cache = case
    [path] = cache.glob("*.npz")
    with np.load(path, allow_pickle=False) as z:  # no object arrays: readable without pickle
        assert {"data", "indices", "indptr", "meta", "beam", "x_mm", "y_mm"} <= set(z.files)
    again = Influence.load(path)
    assert (again.matrix != inf.matrix).nnz == 0 and again.isocentre == inf.isocentre


def test_bad_input_is_one_line(tmp_path):
    p = phantom()
    no_target = Patient(p.id, p.ct, None, p.possible_dose_mask, {"SpinalCord": p.structures["SpinalCord"]}, p.spacing)
    with pytest.raises(DataError, match="no target"):
        check_plannable(no_target)
    with pytest.raises(ConfigError, match="beam set is empty"):
        BeamSet(())
    with pytest.raises(DataError, match="input dose is on a grid of"):
        make_plan(p, np.zeros((8, 8, 8), np.float32), PlanSettings(BEAMS))
    # the command: an empty beam set and a dose on another grid, each one line and exit 1
    from rtgen.data import write_patient
    from rtgen.data.sources.nifti import write_nifti

    write_patient(p, tmp_path / "pats" / p.id)
    (tmp_path / "dose").mkdir()
    write_nifti(tmp_path / "dose" / f"{p.id}.nii.gz", np.zeros((10, 10, 10), np.float32), p.spacing)
    base = ["plan", "--patients", str(tmp_path / "pats"), "--dose", str(tmp_path / "dose"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, [*base, "--angles", ","])
    assert r.exit_code == 1 and "beam set is empty" in r.output and "Traceback" not in r.output
    if __import__("importlib.util").util.find_spec("pyRadPlan") is not None:
        r = CliRunner().invoke(app, base)
        assert r.exit_code == 1 and "expected the reference grid" in r.output and "Traceback" not in r.output


@needs_engine
def test_cli_writes_a_conformant_rtplan_and_rtdose(tmp_path, case, own_dose):
    from rtgen.data.sources.dicom import write_dicom_patient
    from rtgen.data.sources.nifti import write_nifti

    p, inf, cache = case
    _, d0 = own_dose
    write_dicom_patient(p, tmp_path / "pats" / p.id)
    (tmp_path / "dose").mkdir()
    write_nifti(tmp_path / "dose" / f"{p.id}.nii.gz", d0, p.spacing)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["plan", "--patients", str(tmp_path / "pats"), "--dose", str(tmp_path / "dose"),
                                 "--out", str(out), "--format", "dicom", "--bixel", "8", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "influence: " in r.output and "read from the cache" in r.output and "1 of 1 patients planned" in r.output
    plan = pydicom.dcmread(out / f"{p.id}_RTPLAN.dcm")
    dose = pydicom.dcmread(out / f"{p.id}_RTDOSE.dcm")
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert dose.DoseSummationType == "PLAN" and dose.FrameOfReferenceUID == plan.FrameOfReferenceUID
    assert len(plan.BeamSequence) == 9 and plan.FractionGroupSequence[0].NumberOfFractionsPlanned == 35
    assert {(r.DoseReferenceDescription, float(r.TargetPrescriptionDose)) for r in plan.DoseReferenceSequence} == {
        ("PTV70", 70.0), ("PTV56", 56.0)}  # the phantom's targets only
    assert [float(b.ControlPointSequence[0].GantryAngle) for b in plan.BeamSequence] == list(BEAMS.gantry_angles)
    iso = [float(v) for v in plan.BeamSequence[0].ControlPointSequence[0].IsocenterPosition]
    assert iso == pytest.approx(list(inf.isocentre), abs=1e-3)
    fluence = np.load(out / "fluence" / f"{p.id}.npz")
    for b, rb in zip(plan.BeamSequence, plan.FractionGroupSequence[0].ReferencedBeamSequence):
        mlc = b.BeamLimitingDeviceSequence[2]
        n = int(mlc.NumberOfLeafJawPairs)
        assert len(mlc.LeafPositionBoundaries) == n + 1
        cps = b.ControlPointSequence
        k = int(b.BeamNumber) - 1
        assert len(cps) == 2 * len(fluence[f"beam{k}_segment_mu"])
        assert float(rb.BeamMeterset) == pytest.approx(fluence[f"beam{k}_segment_mu"].sum(), abs=1e-3)
        for cp in cps:
            leaves = np.array([float(v) for v in cp.BeamLimitingDevicePositionSequence[-1].LeafJawPositions])
            assert (leaves[:n] <= leaves[n:]).all()  # leaves never cross
        assert float(cps[-1].CumulativeMetersetWeight) == pytest.approx(1.0)
    assert (out / "fluence" / f"{p.id}_beam1.png").is_file() and (out / "plans.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patients"] == 1 and summary["mean_mae_to_input_gy"] < 1.5
    assert 0 <= summary["criteria_share_met_plan"] <= 1
    if shutil.which("dciodvfy"):
        for name in ("RTPLAN", "RTDOSE"):
            o = subprocess.run(["dciodvfy", str(out / f"{p.id}_{name}.dcm")], capture_output=True, text=True, timeout=60)
            errors = [s for s in (o.stdout + o.stderr).splitlines() if s.startswith("Error")]
            assert not errors, (name, errors)


def _estimate_csv(rows: list[tuple[str, str, float, float]]) -> str:
    """A `<id>_dvh.csv` of (structure, metric, predicted, lower edge of the 80 % band) rows."""
    from rtgen.dosimetry.bands import metric_unit, to_csv

    return to_csv([{"structure": s, "metric": m, "unit": metric_unit(m), "predicted": p, "lower_80": lo,
                    "upper_80": 2 * p - lo, "lower_95": lo - 1, "upper_95": 2 * p - lo + 1, "wide": False}
                   for s, m, p, lo in rows])


@needs_engine
def test_bands_form_lowers_an_oar_below_what_the_voxel_form_gives(case, own_dose):
    from rtgen.dosimetry.bands import from_csv
    from rtgen.planning.optimise import band_goals, optimise

    p, inf, _ = case
    _, d0 = own_dose
    cord = p.structures["SpinalCord"]
    mean, top = float(d0[cord].mean()), float(np.percentile(d0[cord], 99))
    rows = from_csv(_estimate_csv([("PTV70", "D_95", 68.0, 60.0), ("SpinalCord", "V_20Gy", 50.0, 40.0),
                                   ("SpinalCord", "mean", mean, mean - 8.0), ("SpinalCord", "D_0.1_cc", top, top)]),
                    "pt_phantom_dvh.csv")
    goals = band_goals(rows)
    assert goals == {"SpinalCord": {"mean": pytest.approx(mean - 8.0, abs=1e-3), "D_0.1_cc": pytest.approx(top, abs=1e-3)}}
    position = np.full(p.possible_dose_mask.size, -1)
    position[inf.body_index] = np.arange(inf.body_index.size)
    rows_of = {n: (r := position[np.flatnonzero(m.ravel())])[r >= 0] for n, m in p.structures.items()}
    pred = d0.ravel()[inf.body_index]

    def plan(form):
        r = optimise(inf.matrix, pred, rows_of, Objective(form=form, iterations=40), p.voxel_volume_mm3,
                     goals=goals if form == "bands" else None)
        return inf.dose(r.weights)

    voxel, bands = plan("voxel"), plan("bands")
    assert bands[cord].mean() < voxel[cord].mean() - 2.0  # pulled towards the band's lower edge
    assert bands[p.structures["PTV70"]].mean() > 0.9 * voxel[p.structures["PTV70"]].mean()  # the targets kept
    with pytest.raises(ConfigError, match="bands form needs"):
        optimise(inf.matrix, pred, rows_of, Objective(form="bands"), p.voxel_volume_mm3)


def test_a_missing_or_malformed_estimate_is_one_line(tmp_path):
    from rtgen.data.sources.nifti import write_nifti
    from rtgen.data.sources.npz import write_npz

    p = phantom()
    write_npz(p, tmp_path / "pats" / f"{p.id}.npz")
    (tmp_path / "dose").mkdir()
    write_nifti(tmp_path / "dose" / f"{p.id}.nii.gz", np.zeros(p.grid, np.float32), p.spacing)
    out = tmp_path / "o"
    base = ["plan", "--patients", str(tmp_path / "pats"), "--dose", str(tmp_path / "dose"), "--out", str(out),
            "--objective", "bands", "--format", "nifti"]
    r = CliRunner().invoke(app, base)  # no estimate at all: refused before any patient
    assert r.exit_code == 1 and "no DVH estimate" in r.output and "Traceback" not in r.output
    assert not (out / "influence").exists()
    if __import__("importlib.util").util.find_spec("pyRadPlan") is None:
        return
    estimate = tmp_path / "dose" / f"{p.id}_dvh.csv"
    for text, says in ((_estimate_csv([("SpinalCord", "mean", 20.0, 18.0)]).replace("18.0", "x"), "not a number"),
                       (_estimate_csv([("PTV70", "D_95", 68.0, 60.0)]), "no OAR mean")):
        estimate.write_text(text)
        r = CliRunner().invoke(app, base)
        assert r.exit_code == 1 and says in r.output and estimate.name in r.output, r.output
        assert "Traceback" not in r.output and not (out / "influence").exists()  # before the influence matrix


@needs_engine
def test_cli_bands_plan_counts_the_goals_it_meets(tmp_path, case, own_dose):
    from rtgen.data.sources.nifti import write_nifti
    from rtgen.data.sources.npz import write_npz

    p, _, cache = case
    _, d0 = own_dose
    write_npz(p, tmp_path / "pats" / f"{p.id}.npz")
    (tmp_path / "dose").mkdir()
    write_nifti(tmp_path / "dose" / f"{p.id}.nii.gz", d0, p.spacing)
    mean = float(d0[p.structures["SpinalCord"]].mean())
    (tmp_path / "dose" / f"{p.id}_dvh.csv").write_text(_estimate_csv([("SpinalCord", "mean", mean, mean + 50.0)]))
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["plan", "--patients", str(tmp_path / "pats"), "--dose", str(tmp_path / "dose"),
                                 "--out", str(out), "--objective", "bands", "--format", "nifti", "--bixel", "8",
                                 "--iterations", "10", "--levels", "3", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "read from the cache" in r.output and "OAR band goals met: 1 of 1 (the input 1)" in r.output
    import csv

    [row] = list(csv.DictReader((out / "plans.csv").open()))
    assert row["objective_form"] == "bands" and row["band_goals"] == "1" and row["band_goals_met_plan"] == "1"


@needs_engine
def test_cli_plans_from_the_models_own_prediction(tmp_path, case):
    """--model predicts first (the shipped default, with its DVH estimate) and plans to its bands."""
    from rtgen.data.sources.npz import write_npz

    p, _, cache = case
    write_npz(p, tmp_path / "pats" / f"{p.id}.npz")
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["plan", "--patients", str(tmp_path / "pats"), "--model", "default", "--out", str(out),
                                 "--objective", "bands", "--format", "nifti", "--bixel", "8", "--iterations", "10",
                                 "--levels", "3", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "model: lightgbm_dose_openkbp_all" in r.output and "OAR band goals met" in r.output
    assert (out / "prediction" / f"{p.id}.nii.gz").is_file() and (out / "prediction" / f"{p.id}_dvh.csv").is_file()
    assert (out / f"{p.id}.nii.gz").is_file()
    import csv

    [row] = list(csv.DictReader((out / "plans.csv").open()))
    assert row["objective_form"] == "bands" and int(row["band_goals"]) > 0


def test_dose_or_model_is_one_line(tmp_path):
    base = ["plan", "--patients", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra in ([], ["--dose", str(tmp_path), "--model", "default"]):
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 1 and "give either --dose" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--dose", str(tmp_path), "--energy", "10"])
    assert r.exit_code == 1 and "6 MV only" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--model", "hub:no_such_model"])
    assert r.exit_code == 1 and "no_such_model" in r.output and "Traceback" not in r.output, r.output
