"""CT -> MR prediction of one patient: its folder read (and, when its MR lies on another grid, its CT
registered onto that MR first) or an already-read pair, and a synthetic MR in [0, 1] on the grid of
the CT that the model was given."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtgen.core.errors import RtgenError, RtgenWarning
from rtgen.data.sources.image_pairs import ImagePair, find_pairs, load_pair, mr_on_another_grid


def synthesise(predictor, patient: ImagePair | str | Path, batch_size: int = 32, sampling=None,
               register: bool = True, notify: Callable[[str], None] | None = None) -> tuple[np.ndarray, ImagePair]:
    """(synthetic MR in [0, 1], float32, the pair whose CT grid it is on) for one patient.

    Only the CT is a model input; of an MR in the patient folder (on the same grid: registered) only
    its field of view is used, to leave blank what it did not acquire (`data.mr_fov`). An MR on
    another grid (an unregistered pair) is used to register the CT onto it (`register`), and the
    MR is then synthesised on the MR's grid: scored there, an unregistered synthesis would be off by
    the 5-15 mm the limbs moved between the scans. `notify` is told when a registration starts.
    `sampling` is used by diffusion models only."""
    if isinstance(patient, ImagePair):
        pair = patient
    else:
        folders = find_pairs(patient)  # a dose patient or an empty folder: one clear error
        if len(folders) != 1:
            raise RtgenError(f"{patient}: holds {len(folders)} CT/MR patients; give one patient folder")
        path = folders[0]
        with tempfile.TemporaryDirectory(prefix="rtgen-register-") as tmp:
            folder = registered(path, Path(tmp), notify) if register and mr_on_another_grid(path) else path
            pair = load_pair(folder, need_mr=False, mr_geometry_only=True)  # the MR is never an input
    if pair.ct is None:
        raise RtgenError(f"{pair.id}: no CT to synthesise from")
    task = predictor.task
    volume = task.predict_pair(predictor.model, pair, predictor.device, batch_size,
                               sampling if task.stochastic else None)
    return volume, pair


def registered(path: Path, tmp: Path, notify: Callable[[str], None] | None = None) -> Path:
    """The patient's CT registered onto its MR's grid (rigid, then B-spline, as `rtgen register`), in
    `tmp`. A pair failing QA is still used, with a warning: it is the best alignment there is."""
    from rtgen.data.registration import PairFiles
    from rtgen.data.registration.run import register_patient

    if notify is not None:
        notify(f"{path.name}: MR on another grid than the CT: registering the CT onto it (rtgen register)")
    report = register_patient(PairFiles(path, Path(path.name)), tmp, keep_failed=True)
    if report.status != "ok":
        qa = report.qa
        warnings.warn(f"{path}: the registration failed QA (body Dice {qa.dice_after:.3f}); synthesising on it "
                      "anyway, check the pair with rtgen register", RtgenWarning, stacklevel=2)
    return tmp / path.name
