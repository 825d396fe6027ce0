"""rtgen's Python API: load a model, predict a patient, score the prediction.

The four functions, importable from the top of the package (`rtgen.load` etc.), do what the
commands do, from Python:

| Python | command |
| --- | --- |
| `rtgen.load(name_or_path).predict(patient)` | `rtgen predict --model NAME --patients PATIENT` |
| `rtgen.read_patient(path)` | what every command reads a patient with |
| `rtgen.evaluate(pred, ref)` | `rtgen evaluate --pred PRED --ref REF` |
| `rtgen.list_models()` | `rtgen models --json` |

A patient is given as a path in any layout rtgen reads (an OpenKBP CSV folder, a NIfTI folder, an
`.npz` cache, a DICOM export with CT series and RTSTRUCT, or, for a CT -> MR model, a folder with
`ct.nii.gz` and optionally `mr.nii.gz`), or as a record already read by `read_patient`.

`import rtgen` stays light: this module imports torch and the models only when a function runs.

Examples:
    Predict a patient's dose with the default dose model, score it against the patient's own plan,
    and write it as `rtgen predict --format nifti` does (each function's own example below runs as
    written, on the OpenKBP patients bundled with rtgen):

    ```python
    import rtgen

    model = rtgen.load("hub:lightgbm_dose_openkbp_all")
    pred = model.predict("data/openkbp/test-pats/pt_241")  # or a DICOM export, a NIfTI folder...
    print(rtgen.evaluate(pred))  # the OpenKBP dose and DVH scores (Gy)
    pred.save("predictions", format="nifti")  # predictions/pt_241.nii.gz
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rtgen.data.records import Patient
    from rtgen.data.sources.image_pairs import ImagePair
    from rtgen.dosimetry.scorecard import Scorecard
    from rtgen.evaluation.dose import EvaluationResult
    from rtgen.evaluation.image_folders import ImageEvaluation
    from rtgen.inference.predictor import Predictor

__all__ = ["Model", "Prediction", "evaluate", "list_models", "load", "read_patient"]

PathLike = str | Path


def _is_image_pair_folder(path: Path) -> bool:
    """One CT/MR patient folder (ct.nii.gz or mr.nii.gz, and no OpenKBP possible dose mask)."""
    from rtgen.data.sources.image_pairs import is_patient_dir

    return is_patient_dir(path) and not (path / "possible_dose_mask.nii.gz").exists()


def read_patient(path: PathLike, load_ct: bool = True, load_dose: bool = True, aliases: Any = None
                 ) -> Patient | ImagePair:
    """Read one patient, in any layout rtgen reads.

    Every volume is checked by its reader (finite values, units, shapes, grids): a bad file raises
    `rtgen.core.errors.DataError` naming the file and what is wrong with it.

    Args:
        path: An OpenKBP CSV patient folder (`pt_N/ct.csv`, ...), a NIfTI patient folder, an `.npz`
            cache, a DICOM export (CT series and RTSTRUCT, optionally an RTDOSE, any nesting), or a
            CT/MR patient folder (`ct.nii.gz` with `mr.nii.gz` or `mr_t1.nii.gz`, optionally a body
            mask `mask.nii.gz`).
        load_ct: Dose patients: read the CT (False reads the structures and dose only, faster).
        load_dose: Dose patients: read the reference dose when there is one.
        aliases: DICOM exports: ROI names to map besides the built-in table (TG-263 names and common
            variants), as a JSON/YAML file or a mapping {rtgen structure: [ROI names]}, e.g.
            `{"PTV70": ["Volume1"]}` (`rtgen ... --aliases FILE`).

    Returns:
        A dose patient, `rtgen.data.records.Patient` (`ct` in HU, `dose` in Gy or None,
        `possible_dose_mask`, `structures`: name -> bool mask, `spacing` in mm), or for a CT/MR
        folder an `rtgen.data.sources.image_pairs.ImagePair` (`ct` in HU, `mr` or None, `body`,
        `spacing`, `affine`), all on the patient's own grid. A CT/MR pair on two grids is refused
        with a pointer to `rtgen register` (a model given the folder registers it itself).

    Examples:
        >>> import rtgen
        >>> from rtgen.data.examples import example_patients_dir
        >>> patient = rtgen.read_patient(example_patients_dir() / "pt_204")
        >>> patient.id, patient.grid, patient.spacing
        ('pt_204', (128, 128, 128), (3.906, 3.906, 2.5))
        >>> sorted(patient.structures)[:3], float(patient.dose.max()) > 60
        (['Brainstem', 'Larynx', 'LeftParotid'], True)
    """
    path = Path(path)
    if path.is_dir() and _is_image_pair_folder(path):
        from rtgen.data.sources.image_pairs import load_pair

        return load_pair(path, need_mr=False)
    from rtgen.data.sources import load_patient

    return load_patient(path, load_ct, load_dose, aliases=_alias_table(aliases))


def _alias_table(aliases: Any):
    """The built-in ROI-name table extended by `aliases` (a file or a mapping), or None for the built-in one."""
    if aliases is None:
        return None
    from rtgen.data.sources.dicom.names import load_aliases

    return load_aliases(aliases)


@dataclass
class Prediction:
    """What `Model.predict` returns: one patient's predicted volume on the patient's own grid.

    It converts to a NumPy array (`np.asarray(prediction)`), and `save` writes it as `rtgen predict`
    does, so that `rtgen evaluate` and `rtgen report` find it.

    Attributes:
        patient_id: The patient's id (its folder name).
        kind: "dose" (a dose model) or "image" (a CT -> MR model).
        volume: The prediction, float32 (x, y, z): a dose in Gy, zero outside the possible dose mask,
            or a synthetic MR in [0, 1], blank outside the MR's field of view when one is known.
        spacing: Voxel size in mm.
        std: The voxel-wise standard deviation in Gy over a dose diffusion model's samples
            (`samples > 1`) or over the default dose model's boosters; else None.
        affine: Image models: the 4 x 4 voxel -> world map of the grid (the CT's, or the MR's when an
            unregistered pair was registered first); else None.
        patient: The record the prediction was made from (`Patient` or `ImagePair`); its reference
            dose, when it has one, is what `rtgen.evaluate(prediction)` scores against.
        source: The patient's path when it was given as one (a DICOM export: where an RTDOSE goes).
        target: DiffKT3D: the generated modality ("dose", "ct", "ptv", "oar" or "body").
        dvh_estimate: Dose models with DVH bands (the default): one dict per structure and metric,
            with the predicted value and `lower_<level>`/`upper_<level>` bounds of its calibrated
            bands (the rows of `<id>_dvh.csv`); else None.
    """

    patient_id: str
    kind: str
    volume: np.ndarray
    spacing: tuple[float, ...]
    std: np.ndarray | None = None
    affine: np.ndarray | None = None
    patient: Any = None
    source: Path | None = None
    target: str = "dose"
    dvh_estimate: list[dict] | None = None

    @property
    def dose(self) -> np.ndarray:
        """The predicted dose in Gy (float32, on the patient's grid); dose models only."""
        if self.kind != "dose" or self.target != "dose":
            raise AttributeError(f"{self.patient_id}: this prediction is a {self.target if self.kind == 'dose' else 'synthetic MR'}, "
                                 "not a dose; use .volume")
        return self.volume

    @property
    def image(self) -> np.ndarray:
        """The synthetic MR in [0, 1] (float32, on the grid of `affine`); CT -> MR models only."""
        if self.kind != "image":
            raise AttributeError(f"{self.patient_id}: this prediction is a dose, not an image; use .dose")
        return self.volume

    def __array__(self, dtype=None, copy=None):
        return self.volume if dtype is None else self.volume.astype(dtype)

    def save(self, out_dir: PathLike, format: str = "nifti") -> Path:
        """Write the prediction into the folder `out_dir` as `rtgen predict --out` does (atomically).

        Args:
            out_dir: A folder, created if missing.
            format: Doses: "nifti" (`<id>.nii.gz`, with `<id>_std.nii.gz` when there is a spread),
                "csv" (`<id>.csv`, the OpenKBP submission format; OpenKBP's grid only) or "dicom"
                (`<id>_RTDOSE.dcm`, an RTDOSE on the patient's own CT; the patient must have been
                given as a DICOM folder). Images and other DiffKT3D targets: "nifti" only
                (`<id>.nii.gz`, `<id>_<target>.nii.gz`).

        Returns:
            The file written.
        """
        from rtgen.core.errors import RtgenError
        from rtgen.inference.writers import DOSE_FORMATS, write_dose, write_image

        formats = DOSE_FORMATS if self.kind == "dose" and self.target == "dose" else ("nifti",)
        if format not in formats:
            raise RtgenError(f"format={format!r}: this prediction is written as one of {', '.join(formats)}")
        if self.kind == "image":
            return write_image(out_dir, self.patient_id, self.volume, self.affine)
        if self.target != "dose":
            from rtgen.data.sources.nifti import write_nifti

            return write_nifti(Path(out_dir) / f"{self.patient_id}_{self.target}.nii.gz", self.volume, self.spacing)
        # the RTDOSE's grid around the possible dose mask, as `rtgen predict --format dicom` writes it
        path = write_dose(out_dir, self.patient_id, self.volume, self.spacing, format, self.std, source=self.source,
                          body=getattr(self.patient, "possible_dose_mask", None))
        if self.dvh_estimate is not None:
            from rtgen.dosimetry.bands import write_dvh_estimate

            write_dvh_estimate(out_dir, self.patient_id, self.dvh_estimate)
        return path

    def report(self, out_html: PathLike, title: str = "rtgen dose report") -> Path:
        """Write the one-file HTML report of this dose prediction (`rtgen predict --report`): slices,
        isodoses, DVHs and metrics, compared with the patient's own dose when it has one.

        Returns:
            The HTML file written.
        """
        from rtgen.core.errors import RtgenError
        from rtgen.evaluation.report import write_report_cases

        if self.kind != "dose" or self.target != "dose":
            raise RtgenError(f"{self.patient_id}: the report shows doses; this prediction is not one")
        return write_report_cases([(self.patient, self.volume)], out_html, title=title)


class Model:
    """A loaded model (what `rtgen.load` returns): dose models and CT -> MR models alike.

    Attributes:
        name: What it was loaded as (a shipped model's folder name, or the run folder's path).
        predictor: The underlying `rtgen.inference.Predictor` (task, network, config, device).
    """

    name: str
    predictor: Predictor

    def __init__(self, predictor: Predictor, name: str):
        self.predictor = predictor
        self.name = name

    @property
    def kind(self) -> str:
        """"dose" (a dose in Gy per patient) or "image" (a CT -> MR model: a synthetic MR in [0, 1])."""
        return self.predictor.output_kind

    @property
    def model_name(self) -> str:
        """The network: `lightgbm_dose`, `mamba_unet_v2`, `md_dose`, `diffkt3d`, `unet`, `diffma`, ..."""
        return self.predictor.task.model_name

    @property
    def task(self) -> str:
        """The task it was trained for: `dose_boosted`, `dose_regression`, `image_regression`, ..."""
        return str(self.predictor.config.get("task", ""))

    @property
    def stochastic(self) -> bool:
        """Whether it samples (diffusion models: `sampler`, `steps`, `samples` and `seed` apply)."""
        return bool(self.predictor.task.stochastic)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.model_name}, {self.kind}, device={self.predictor.device})"

    def predict(self, patient: PathLike | Patient | ImagePair, *, tta: bool = False, batch_size: int = 32,
                sampler: str | None = None, steps: int = 10, samples: int = 1, seed: int = 0,
                best_of: int | None = None, target: str = "dose", register: bool = True,
                aliases: Any = None) -> Prediction:
        """Predict one patient, as `rtgen predict` does.

        Args:
            patient: A path to one patient in any layout rtgen reads (see `read_patient`), or a record
                already read (`Patient` for dose models, `ImagePair` for CT -> MR models). A patient
                off the model's grid (a DICOM CT at ~1 mm) is resampled for the network and the dose
                resampled back.
            tta: Average over in-plane flips (dose models: 3x slower; a CT -> MR regression: its 4
                flips, which then stay on for this model).
            batch_size: Slices per forward pass.
            sampler: Diffusion models: ddpm, ddim, dpmpp or ode (default dpmpp; image models their
                own); DiffKT3D: euler, heun or dpmpp (default: its own).
            steps: Diffusion models: sampling steps.
            samples: Diffusion models: samples averaged; a dose model also returns their spread (`std`).
            seed: Diffusion models: random seed (a prediction is deterministic for a seed).
            best_of: DiffKT3D: sample N doses and keep the best by its clinical scorecard.
            target: DiffKT3D: the modality to generate from the others ("dose", "ct", "ptv", "oar", "body").
            register: CT -> MR models given a folder whose MR is on another grid than its CT: register
                the CT onto the MR first (as `rtgen register`) and synthesise on the MR's grid.
            aliases: A DICOM export: ROI names to map besides the built-in table, as for `read_patient`.

        Returns:
            A `Prediction`: `.dose` (Gy) or `.image` ([0, 1]), float32 on the patient's grid, and `.save`.

        Raises:
            rtgen.core.errors.RtgenError: An option the model does not have (named as the argument), a
                patient the model cannot take (a dose patient for a CT -> MR model and the reverse), or
                a bad file (`DataError`, naming the file).

        Examples:
            A dose model on a bundled OpenKBP patient (a DICOM export is given the same way):

            >>> import tempfile
            >>> import rtgen
            >>> from rtgen.data.examples import example_patients_dir
            >>> model = rtgen.load("hub:lightgbm_dose_openkbp_all")
            >>> pred = model.predict(example_patients_dir() / "pt_204")
            >>> pred.patient_id, pred.kind, pred.dose.shape, pred.dose.dtype
            ('pt_204', 'dose', (128, 128, 128), dtype('float32'))
            >>> float(pred.dose.max()) > 60  # Gy, on the patient's grid (pred.spacing, in mm)
            True
            >>> scores = rtgen.evaluate(pred).summary()  # against the patient's own plan
            >>> scores["dose_score"] < 5  # mean absolute error in Gy
            True
            >>> pred.save(tempfile.mkdtemp(), format="nifti").name
            'pt_204.nii.gz'

            The shipped CT -> MR model on a CT/MR patient folder (`ct.nii.gz`, and `mr.nii.gz` if any)::

                mr = rtgen.load("hub:unet_sts").predict("data/sts/STS_018").image  # [0, 1], the CT's grid
        """
        from rtgen.core.errors import RtgenError

        p = self.predictor
        sampling = p.sampling_config(sampler, steps, samples, seed, best_of, target)
        source = None if not isinstance(patient, (str, Path)) else Path(patient)
        if self.kind == "image":
            from rtgen.data.records import Patient
            from rtgen.inference.images import synthesise

            if isinstance(patient, Patient):
                raise RtgenError(f"{patient.id}: {self.model_name} synthesises an MR from a CT/MR patient folder "
                                 "(ct.nii.gz) or an ImagePair; this is a dose patient")
            if tta:
                p.task.use_flip_average()
            volume, pair = synthesise(p, patient, batch_size, sampling, register)
            return Prediction(pair.id, "image", np.asarray(volume, np.float32), tuple(pair.spacing),
                              affine=pair.affine, patient=pair, source=source)
        from rtgen.core.structures import TARGETS
        from rtgen.data.records import Patient

        if source is not None:
            record = self._read_dose_patient(source, aliases, require_target=target == "dose")
        elif isinstance(patient, Patient):
            record = patient
            if target == "dose" and not any(t in record.structures for t in TARGETS):
                raise RtgenError(f"{record.id}: no target (PTV56, PTV63 or PTV70), and a dose is predicted from "
                                 f"the patient's targets; structures: {', '.join(record.structures) or 'none'}")
        else:
            raise RtgenError(f"{self.model_name} predicts doses of dose patients (a path or a Patient), "
                             f"not {type(patient).__name__}")
        if target != "dose":
            volume = p.task.impute(p.model, record, target, sampling, p.device)
            return Prediction(record.id, "dose", np.asarray(volume, np.float32), tuple(record.spacing),
                              patient=record, source=source, target=target)
        dose, std = p.predict_with_uncertainty(record, batch_size, tta, sampling if p.task.stochastic else None)
        estimate = p.task.dvh_estimate(record, dose) if hasattr(p.task, "dvh_estimate") else None
        return Prediction(record.id, "dose", np.asarray(dose, np.float32), tuple(record.spacing),
                          std=None if std is None else np.asarray(std, np.float32), patient=record, source=source,
                          dvh_estimate=estimate)

    def _read_dose_patient(self, path: Path, aliases: Any = None, require_target: bool = False) -> Patient:
        from rtgen.core.errors import DataError
        from rtgen.data.sources import is_patient, load_patient

        if path.is_dir() and not is_patient(path):
            if _is_image_pair_folder(path):
                raise DataError(path, f"is a CT/MR patient; {self.model_name} predicts doses (an OpenKBP, "
                                      "NIfTI, npz or DICOM dose patient)")
            subs = [q for q in path.iterdir() if not q.name.startswith(".")]
            if subs and all(q.is_dir() or q.suffix == ".npz" for q in subs):
                raise DataError(path, f"is a folder of {len(subs)} patients; predict takes one patient "
                                      "(rtgen predict --patients takes a whole split)")
        return load_patient(path, aliases=_alias_table(aliases), require_target=require_target)


def load(name_or_path: PathLike, device: str = "auto") -> Model:
    """Load a model: a shipped one by name, or a run folder that `rtgen train` wrote.

    Args:
        name_or_path: "hub:NAME" or NAME, a model shipped inside rtgen (`lightgbm_dose_openkbp_all`,
            the default dose model; `mamba_unet_v2_openkbp`, `md_dose_openkbp`, `diffkt3d_openkbp_nft`,
            `unet_sts` (CT -> MR), `diffma_sts`, ...: `list_models()["shipped"]`; a task name such as
            "dose" or "image_regression" names that task's default model), or a run folder
            (or its weights file, with config.json beside it).
        device: "auto" (CUDA when available), "cpu" or "cuda".

    Returns:
        A `Model`, whose `.predict(patient)` returns a `Prediction`.

    Raises:
        rtgen.core.errors.RtgenError: No such shipped model or run folder, or a checkpoint whose
            config or weights do not match.

    Examples:
        >>> import rtgen
        >>> model = rtgen.load("hub:lightgbm_dose_openkbp_all")
        >>> model.kind, model.model_name, model.task
        ('dose', 'lightgbm_dose', 'dose_boosted')
        >>> rtgen.load("unet_sts").kind  # the shipped CT -> MR model
        'image'
    """
    from rtgen.inference import load_predictor, resolve_model

    return Model(load_predictor(resolve_model(name_or_path), device), str(name_or_path).removeprefix("hub:"))


def evaluate(pred: PathLike | Prediction | np.ndarray, ref: PathLike | Patient | ImagePair | None = None, *,
             out: PathLike | None = None, gamma: bool = False,
             scorecard: bool | PathLike | Scorecard = False, aliases: Any = None
             ) -> EvaluationResult | ImageEvaluation:
    """Score predictions against references, as `rtgen evaluate` does.

    Doses get the OpenKBP dose and DVH scores (exactly as the challenge computes them), the DVH
    metric errors and the ICRU 83 homogeneity index error per PTV; synthetic MRs get SSIM, PSNR and
    MSE, whole and inside the body (DiffMa scoring: each volume normalised to 0-255 by its own
    0.5/99.5 percentiles, on the MR's grid).

    Args:
        pred: A folder of predictions (`pt_N.csv`, `pt_N.nii.gz`, `<id>_RTDOSE.dcm`, or `<patient>.nii.gz`
            synthetic MRs), or one prediction: a `Prediction` from `Model.predict`, or an array (a dose
            in Gy, or a synthetic MR) on the reference's grid.
        ref: For a folder: the reference split folder (patients with a dose, or CT/MR pairs). For one
            prediction: the reference patient (a path or a record); None scores a `Prediction`
            against the patient it was predicted from (its own dose or MR).
        out: Folders only: write metrics.json, per_patient.csv (and DVH figures) here.
        gamma: Doses: also the 3 %/3 mm global gamma pass rate (slower).
        scorecard: Doses: also score each prediction and reference plan on a clinical scorecard:
            True for the built-in head-and-neck SIB template, or a scorecard JSON path, or an
            `rtgen.dosimetry.scorecard.Scorecard`; adds the GDP-HMM MAE.
        aliases: DICOM references: ROI names to map besides the built-in table, as for `read_patient`.

    Returns:
        An `rtgen.evaluation.EvaluationResult` for doses (`.summary()`: {"dose_score", "dvh_score",
        "dvh_metric_errors", "hi_abs_error", ...} in Gy; `.scores.patients` per patient) or an
        `rtgen.evaluation.image_folders.ImageEvaluation` for images (`.per_patient`, `.summary()`:
        {"ssim", "psnr", "mse", "ssim_body", ...}).

    Examples:
        A dose 5 % above the plan, scored against it (any array on the patient's grid will do; so
        will a `Prediction`, or `rtgen.evaluate("pred_folder", "data/openkbp/validation-pats")`):

        >>> import rtgen
        >>> from rtgen.data.examples import example_patients_dir
        >>> patient = rtgen.read_patient(example_patients_dir() / "pt_219", load_ct=False)
        >>> result = rtgen.evaluate(patient.dose * 1.05, patient)
        >>> s = result.summary()
        >>> s["n_patients"], round(s["dose_score"], 3), round(s["dvh_score"], 3)  # Gy
        (1, 1.735, 2.547)
    """
    from rtgen.core.errors import RtgenError

    card = _scorecard(scorecard)
    if isinstance(pred, (str, Path)):
        if ref is None or not isinstance(ref, (str, Path)):
            raise RtgenError(f"{pred}: a folder of predictions is scored against a reference folder (ref=...)")
        from rtgen.evaluation import evaluate_folders
        from rtgen.evaluation.image_folders import evaluate_image_folders, has_mr_references

        if has_mr_references(ref):
            if card is not None or gamma:
                raise RtgenError(f"{ref}: holds CT/MR pairs; the scorecard and gamma score doses")
            return evaluate_image_folders(pred, ref, out, progress=False)
        from rtgen.data.sources.dicom.names import using_aliases

        with using_aliases(_alias_table(aliases)):  # the references' ROI names
            return evaluate_folders(pred, ref, out, gamma=gamma, progress=False, scorecard=card)
    if out is not None:
        raise RtgenError("out=: metrics.json and per_patient.csv are written for folders of predictions; "
                         "one prediction's scores are returned")
    prediction = pred if isinstance(pred, Prediction) else None
    volume = np.asarray(pred, np.float32)
    image = prediction.kind == "image" if prediction is not None else _is_image_reference(ref)
    if ref is None:
        if prediction is None or prediction.patient is None:
            raise RtgenError("ref=: an array is scored against a reference patient (a path or a record)")
        # the record it was predicted from; a CT -> MR prediction read its MR's geometry only: read it whole
        ref = prediction.source if image and prediction.source is not None else prediction.patient
    if image:
        from rtgen.data.sources.image_pairs import ImagePair
        from rtgen.evaluation.image_folders import ImageEvaluation, read_reference, score_image

        if card is not None or gamma:
            raise RtgenError("the scorecard and gamma score doses; this is a synthetic MR")
        pair = ref if isinstance(ref, ImagePair) else read_reference(ref)
        result = ImageEvaluation()
        score_image(result, pair, volume)
        return result
    from rtgen.dosimetry import OpenKBPScores
    from rtgen.evaluation.dose import EvaluationResult, score_patient

    patient = ref if not isinstance(ref, (str, Path)) else read_patient(ref, load_ct=False, aliases=aliases)
    result = EvaluationResult(OpenKBPScores())
    score_patient(result, patient, volume, gamma, card, prediction.std if prediction is not None else None,
                  dvh_estimate=prediction.dvh_estimate if prediction is not None else None)
    return result


def _is_image_reference(ref) -> bool:
    if isinstance(ref, (str, Path)):
        return Path(ref).is_dir() and _is_image_pair_folder(Path(ref))
    from rtgen.data.sources.image_pairs import ImagePair

    return isinstance(ref, ImagePair)


def _scorecard(scorecard) -> Scorecard | None:
    if scorecard is False or scorecard is None:
        return None
    from rtgen.dosimetry.scorecard import Scorecard

    if scorecard is True:
        return Scorecard.default_hn_sib()
    if isinstance(scorecard, (str, Path)):
        return Scorecard.from_json(scorecard)
    return scorecard


def list_models(parameters: bool = True) -> dict[str, list[dict]]:
    """What can be loaded: the checkpoints shipped in rtgen, and the registered networks and tasks
    (what `rtgen models --json` prints).

    Args:
        parameters: Count each registered network's parameters at its default config (builds each
            network once, about a second).

    Returns:
        {"shipped": [{"folder", "model", "task", "default", "data", "trained_on"}, ...] (a folder is
        what `load("hub:FOLDER")` takes), "models": [{"model", "task", "parameters",
        "description"}, ...], "tasks": [{"task", "description"}, ...]}.

    Examples:
        >>> import rtgen
        >>> listing = rtgen.list_models(parameters=False)
        >>> [s["folder"] for s in listing["shipped"] if s["default"] and s["task"] == "dose_boosted"]
        ['lightgbm_dose_openkbp_all']
    """
    from rtgen.inference.catalogue import catalogue

    return catalogue(parameters)
