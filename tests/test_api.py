"""The Python API at the top of the package (`rtgen.load`, `read_patient`, `evaluate`, `list_models`):
its docstring examples and the README's example run as written, a dose model and a CT -> MR model
predict through one `Model.predict`, and `import rtgen` imports none of the heavy libraries.

Cost: two LightGBM predictions of a bundled patient (a docstring's and the README's, about 6 s of
CPU each) and two `hub:unet_sts` syntheses of 4 slices (about 2 s)."""

from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import rtgen
import rtgen.api
from rtgen.core.errors import DataError, RtgenError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "rtgen" / "examples" / "openkbp"
STS = Path(__file__).parent / "data" / "sts_018"  # one registered CT/MR pair, 12 slices (its README.md)
HEAVY = ("torch", "monai", "diffusers", "numba", "lightgbm")


def test_import_rtgen_is_light_and_exposes_the_api_lazily():
    code = ("import sys, rtgen, rtgen.api; names = dir(rtgen); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]", out[0]  # neither `import rtgen` nor the API module imports them before a call
    assert {"load", "read_patient", "evaluate", "list_models", "Model", "Prediction"} <= set(eval(out[1]))
    assert set(rtgen.__all__) >= {"load", "read_patient", "evaluate", "list_models"}
    assert rtgen.load is rtgen.api.load
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rtgen.nothing  # noqa: B018


def test_the_api_docstring_examples_run(tmp_path, monkeypatch):
    """Every `>>>` example of rtgen.api, as mkdocstrings shows it on docs/api.md."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # `pred.save(tempfile.mkdtemp())` writes here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in doctest.DocTestFinder().find(rtgen.api) if t.examples]
    assert {t.name.split(".")[-1] for t in tests} >= {"read_patient", "predict", "load", "evaluate", "list_models"}
    report: list[str] = []
    for t in tests:
        runner.run(t, out=report.append)
    assert runner.failures == 0, "".join(report)


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its Python API example (a ```python block after <!-- api-example -->)"
    return m.group(1)


def test_the_readme_api_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository, as a user in a clone runs them
    exec(compile(_readme_api_example(), "README.md", "exec"), {"__name__": "readme_api_example"})
    printed = capsys.readouterr().out
    assert printed.strip(), "the README's API example prints its results"


def test_a_prediction_saves_what_rtgen_evaluate_reads_and_scores_as_in_memory(tmp_path):
    """`Prediction.save` writes what `rtgen evaluate` finds, scored as `rtgen.evaluate` scores the object;
    its report is one HTML file. (The prediction here is the plan scaled by 1.02: the docstring and
    README examples run the model, on a path and on a record.)"""
    patient = rtgen.read_patient(EXAMPLES / "pt_219")
    pred = rtgen.Prediction("pt_219", "dose", (patient.dose * 1.02).astype(np.float32), patient.spacing,
                            patient=patient)
    assert np.asarray(pred) is pred.dose
    with pytest.raises(AttributeError, match="not an image"):
        _ = pred.image
    with pytest.raises(RtgenError, match="format='png': this prediction is written as one of csv, nifti, dicom"):
        pred.save(tmp_path, format="png")
    pred.save(tmp_path / "pred", format="csv")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["pt_219.csv"]
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "pt_219").symlink_to(EXAMPLES / "pt_219")
    on_disk = rtgen.evaluate(tmp_path / "pred", ref, out=tmp_path / "scores")
    in_memory = rtgen.evaluate(pred)  # against the record's own dose
    assert on_disk.summary()["dose_score"] == pytest.approx(in_memory.summary()["dose_score"], rel=1e-6)
    assert json.loads((tmp_path / "scores" / "metrics.json").read_text())["n_patients"] == 1
    assert repr(in_memory).startswith("EvaluationResult(1 patient(s): dose score 0.694 Gy")
    assert json.loads(str(in_memory)) == json.loads(json.dumps(in_memory.summary()))  # print() shows metrics.json
    with pytest.raises(RtgenError, match="out=: metrics.json and per_patient.csv are written for folders"):
        rtgen.evaluate(pred, out=tmp_path / "x")
    assert pred.report(tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_ct_to_mr_model_predicts_a_pair_folder_and_a_record_alike(tmp_path):
    """`hub:unet_sts` through the same `predict`, on 4 slices of tests/data/sts_018 (its scores on all
    12 slices, as shipped, are tests/test_shipped_regression.py's): a folder and the record read
    from it give one MR in [0, 1] on the CT grid, which `evaluate` scores against the folder's MR."""
    import nibabel as nib

    folder = tmp_path / "sts_018"
    folder.mkdir()
    for name in ("ct.nii.gz", "mr.nii.gz", "body_mask.nii.gz"):
        img = nib.load(STS / name)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 4:8], img.affine, img.header), folder / name)
    model = rtgen.load("hub:unet_sts")
    assert (model.kind, model.task) == ("image", "image_regression")
    pred = model.predict(folder)
    pair = rtgen.read_patient(folder)  # a CT/MR folder reads as an ImagePair, its MR included
    assert pair.mr is not None and pred.image.shape == pair.ct.shape == (113, 94, 4)
    assert pred.image.dtype == np.float32 and 0 <= pred.image.min() and 0.5 < pred.image.max() <= 1
    assert np.allclose(pred.affine, pair.affine) and np.array_equal(model.predict(pair).image, pred.image)
    scores = rtgen.evaluate(pred).summary()  # against the folder's MR
    assert 20 < scores["ssim"] < 80 and 10 < scores["psnr"] < 30
    assert rtgen.evaluate(pred.image, pair).summary()["ssim"] == pytest.approx(scores["ssim"])
    assert repr(rtgen.evaluate(pred)).startswith("ImageEvaluation(1 patient(s): SSIM")
    assert pred.save(tmp_path / "out", format="nifti").name == "sts_018.nii.gz"
    with pytest.raises(RtgenError, match="synthesises an MR from a CT/MR patient folder"):
        model.predict(rtgen.read_patient(EXAMPLES / "pt_204", load_ct=False))
    with pytest.raises(DataError, match="holds no patient folders"):
        model.predict(EXAMPLES / "pt_204")


def test_options_and_inputs_a_model_cannot_take_are_refused_before_any_patient_is_read(tmp_path):
    model = rtgen.load("hub:lightgbm_dose_openkbp")
    never_read = tmp_path / "missing"
    with pytest.raises(RtgenError, match=r"samples=2: lightgbm_dose is deterministic"):
        model.predict(never_read, samples=2)
    with pytest.raises(RtgenError, match=r"best_of=2: lightgbm_dose predicts doses only"):
        model.predict(never_read, best_of=2)
    with pytest.raises(DataError, match="is a CT/MR patient"):
        model.predict(STS)
    with pytest.raises(DataError, match="is a folder of 2 patients; predict takes one patient"):
        model.predict(EXAMPLES)
    with pytest.raises(RtgenError, match="neither a run folder nor a shipped model.*lightgbm_dose_openkbp"):
        rtgen.load("no_such_model")
    with pytest.raises(RtgenError, match="no model.safetensors"):
        rtgen.load(tmp_path)  # a folder that holds no run
    with pytest.raises(RtgenError, match="ref=: an array is scored against a reference patient"):
        rtgen.evaluate(np.zeros((128, 128, 128), np.float32))


def test_list_models_is_what_rtgen_models_lists():
    listing = rtgen.list_models(parameters=False)
    shipped = {s["folder"]: s for s in listing["shipped"]}
    assert {"lightgbm_dose_openkbp_all", "lightgbm_dose_openkbp", "unet_sts", "diffma_sts"} <= set(shipped)
    assert shipped["lightgbm_dose_openkbp_all"]["default"] and not shipped["lightgbm_dose_openkbp"]["default"]
    assert shipped["unet_sts"]["task"] == "image_regression"
    assert {"mamba_unet_v2", "md_dose", "lightgbm_dose"} <= {m["model"] for m in listing["models"]}
    assert "parameters" not in listing["models"][0] and {"dose_regression"} <= {t["task"] for t in listing["tasks"]}
