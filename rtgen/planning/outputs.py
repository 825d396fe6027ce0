"""What `rtgen plan` writes for each patient and for the cohort.

* the delivered dose (the sequenced plan's) in `rtgen predict`'s formats: ``<id>.csv``,
  ``<id>.nii.gz`` or, for a DICOM patient, ``<id>_RTDOSE.dcm`` (DoseSummationType PLAN, referencing
  the RTPLAN beside it);
* ``<id>_RTPLAN.dcm`` (DICOM patients): beams, control points, MLC positions and monitor units;
* ``fluence/<id>.npz``: per beam the optimised and the sequenced fluence maps, their grid, and the
  segments (leaf positions, MU); ``fluence/<id>_beam<k>.png``: both maps side by side;
* ``plans.csv``: one row per patient (sizes, time per stage, distance to the input dose before and
  after sequencing, segments, MU, the input's and the plan's distance to the reference dose where the
  patient has one, clinical criteria met by the plan, the input and the reference; with
  ``--objective bands``, how many of the OAR goals (band lower edges) the plan and its input meet);
  ``summary.json``: the cohort's means and the pooled share of criteria met.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from rtgen.core.atomic import atomic_path, atomic_write_text
from rtgen.core.structures import PRESCRIPTION_GY
from rtgen.dosimetry.criteria import default_criteria, pooled_share
from rtgen.inference.writers import write_dose


def write_fluence(out_dir: Path, result) -> list[Path]:
    """fluence/<id>.npz and one PNG per beam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir) / "fluence"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    paths = []
    mus = result.segment_mu()
    for k, (bf, seq) in enumerate(result.sequenced.beams):
        delivered = seq.delivered_on(bf.y0 + bf.bixel_mm * np.arange(bf.map.shape[0] + 1)) if seq is not None \
            else np.zeros_like(bf.map)
        arrays[f"beam{k}_optimised"] = bf.map
        arrays[f"beam{k}_sequenced"] = delivered
        arrays[f"beam{k}_origin_mm"] = np.array([bf.x0, bf.y0])
        if seq is not None:
            arrays[f"beam{k}_leaf_edges_mm"] = seq.leaf_edges
            arrays[f"beam{k}_left_mm"] = np.array([s.left for s in seq.segments]).reshape(len(seq.segments), -1)
            arrays[f"beam{k}_right_mm"] = np.array([s.right for s in seq.segments]).reshape(len(seq.segments), -1)
            arrays[f"beam{k}_segment_mu"] = np.array(mus[k])
        if bf.map.size == 0:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), constrained_layout=True)
        extent = (bf.x0, bf.x0 + bf.map.shape[1] * bf.bixel_mm, bf.y0, bf.y0 + bf.map.shape[0] * bf.bixel_mm)
        top = float(max(bf.map.max(), delivered.max(), 1e-9))
        for ax, m, title in ((axes[0], bf.map, "optimised"), (axes[1], delivered, f"sequenced ({seq.n_segments} segments)"
                                                                if seq is not None else "sequenced")):
            im = ax.imshow(m, origin="lower", extent=extent, vmin=0, vmax=top, cmap="viridis")
            ax.set_title(title)
            ax.set_xlabel("X (leaf travel, mm)")
            ax.set_ylabel("Y (mm)")
        fig.colorbar(im, ax=axes, label="beamlet weight")
        fig.suptitle(f"{result.patient_id}: beam {k + 1}, gantry {bf.gantry_angle:g} deg")
        path = folder / f"{result.patient_id}_beam{k + 1}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        paths.append(path)
    arrays["gantry_angles"] = np.array(result.influence.gantry_angles)
    arrays["bixel_mm"] = np.array(result.influence.bixel_mm)
    arrays["isocentre_mm"] = np.array(result.influence.isocentre)
    npz = folder / f"{result.patient_id}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return [npz, *paths]


def write_rtplan_for(out_dir: Path, result, source: Path, targets=tuple(PRESCRIPTION_GY), ref=None) -> str:
    """<id>_RTPLAN.dcm on the CT of the DICOM patient folder `source`, prescribing `targets`; its SOPInstanceUID."""
    from rtgen.data.sources.dicom import read_ct_reference
    from rtgen.data.sources.dicom.rtplan_write import PlanBeam, write_rtplan

    ref = ref or read_ct_reference(source)
    beams = []
    mus = result.segment_mu()
    for k, (bf, seq) in enumerate(result.sequenced.beams):
        if seq is None or not seq.segments:
            continue
        beams.append(PlanBeam(bf.gantry_angle, seq.leaf_edges, [s.left for s in seq.segments],
                              [s.right for s in seq.segments], mus[k]))
    return write_rtplan(Path(out_dir) / f"{result.patient_id}_RTPLAN.dcm", ref, beams, result.influence.isocentre,
                        result.settings.fractions, energy_mv=result.settings.beams.energy_mv,
                        prescriptions={t: PRESCRIPTION_GY[t] for t in targets})


def band_goals_met(dose: np.ndarray, patient, goals: dict[str, dict[str, float]]) -> int:
    """How many of the OAR goals of `--objective bands` (name -> metric -> Gy) `dose` meets (0.01 Gy slack)."""
    from rtgen.dosimetry.bands import metric_value

    return sum(metric_value(dose[patient.structures[name]], metric, patient.voxel_volume_mm3) <= goal + 0.01
               for name, metrics in goals.items() if name in patient.structures and patient.structures[name].any()
               for metric, goal in metrics.items())


def write_plan(out_dir: Path, patient, input_dose: np.ndarray, result, fmt: str, source: Path | None = None,
               goals: dict[str, dict[str, float]] | None = None) -> tuple[dict, dict]:
    """Every per-patient output; returns the patient's row for plans.csv and its criteria results.
    `goals`: the OAR goals of `--objective bands`, whose count met by the plan and its input is added."""
    out_dir = Path(out_dir)
    if fmt == "dicom":
        from rtgen.data.sources.dicom import write_rtdose

        uid = write_rtplan_for(out_dir, result, source, [t for t in PRESCRIPTION_GY if t in patient.structures])
        write_rtdose(out_dir / f"{patient.id}_RTDOSE.dcm", result.delivered_dose, source, plan_uid=uid,
                     description="rtgen plan dose (sequenced)", body=patient.possible_dose_mask)
    else:
        write_dose(out_dir, patient.id, result.delivered_dose, patient.spacing, fmt)
    write_fluence(out_dir, result)
    row = result.summary(input_dose, patient.possible_dose_mask)
    if patient.dose is not None:  # is the plan closer to the reference than the dose it mimicked?
        body = patient.possible_dose_mask
        row["mae_input_to_reference_gy"] = float(np.abs(input_dose - patient.dose)[body].mean())
        row["mae_plan_to_reference_gy"] = float(np.abs(result.delivered_dose - patient.dose)[body].mean())
    if goals is not None:
        row["band_goals"] = sum(len(m) for n, m in goals.items()
                                if n in patient.structures and patient.structures[n].any())
        row["band_goals_met_plan"] = band_goals_met(result.delivered_dose, patient, goals)
        row["band_goals_met_input"] = band_goals_met(input_dose, patient, goals)
    criteria, judged = criteria_row(patient, input_dose, result)
    return {**row, **criteria}, judged


def criteria_row(patient, input_dose, result) -> tuple[dict, dict]:
    """The share of OpenKBP-Opt's criteria met by the delivered plan, its input and the reference dose."""
    card = default_criteria()
    row = {}
    judged = {"plan": card.evaluate(result.delivered_dose, patient.structures, patient.voxel_volume_mm3),
              "plan_unsequenced": card.evaluate(result.fluence_dose, patient.structures, patient.voxel_volume_mm3),
              "input": card.evaluate(input_dose, patient.structures, patient.voxel_volume_mm3)}
    if patient.dose is not None:
        judged["reference"] = card.evaluate(patient.dose, patient.structures, patient.voxel_volume_mm3)
    for k, r in judged.items():
        row[f"criteria_met_{k}"] = r.n_met
        row[f"criteria_applicable_{k}"] = r.n_applicable
    return row, judged


def cohort_summary(rows: list[dict], judged: list[dict]) -> dict:
    """Means of the numeric columns and the pooled share of criteria met per dose kind."""
    out = {"n_patients": len(rows)}
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[f"mean_{k}"] = float(np.mean(vals)) if vals else None
    for kind in ("plan", "plan_unsequenced", "input", "reference"):
        results = [j[kind] for j in judged if kind in j]
        if results:
            out[f"criteria_share_met_{kind}"] = pooled_share(results)
    out["criteria_set"] = default_criteria().name
    return out


def write_tables(out_dir: Path, rows: list[dict], judged: list[dict]) -> dict:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(out_dir) / "plans.csv", buf.getvalue())
    summary = cohort_summary(rows, judged)
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
