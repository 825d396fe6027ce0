"""What several benchmark scripts share: the data their `--smoke` mode runs on, and the CT -> MR
scoring loop (a setting predicted as `rtgen predict` makes it, scored as `rtgen evaluate` scores it).

Not a benchmark itself. Scripts import it as `import common` (Python puts the script's folder on
the path when it runs `python benchmarks/NAME.py`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_PAIRS = REPO / "tests" / "data"  # one registered CT/MR pair (12 axial slices of a TCIA sarcoma patient)


def bundled_openkbp() -> Path:
    """The two OpenKBP validation patients shipped with rtgen (pt_204 and pt_219)."""
    from rtgen.data.examples import example_patients_dir

    return example_patients_dir()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to `n` inside the block, as they were after it (a smoke run
    happens inside the test process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def smoke_dir(name: str) -> Path:
    """A fresh temporary folder for a smoke run's outputs."""
    return Path(tempfile.mkdtemp(prefix=f"rtgen-smoke-{name}-"))


def predict_setting(pred, pair, setting: str):
    """One CT -> MR prediction of `pair` under a sampling setting, as `rtgen predict` makes it.

    An image-regression run (a UNet) takes `once` or `flips` (the mean over the slice and its three
    in-plane flips, `predict.flip_average`). A diffusion run takes SAMPLER:STEPS[@STRENGTH][xK]: a
    strength below 1 starts from the run's base model's MR (a refiner, see
    configs/diffma_cpu_refiner.yaml), 1 from pure noise; xK averages K samples
    (`rtgen predict --samples K`).
    """
    from rtgen.tasks.dose_base import SamplingConfig

    task = pred.task
    if task.name == "image_regression":
        if setting not in ("once", "flips"):
            raise SystemExit(f"{setting}: a regression run takes the settings once and flips")
        task.predict.flip_average = setting == "flips"
        return task.predict_pair(pred.model, pair, "cpu", 64)
    setting, _, samples = setting.partition("x")
    head, _, strength = setting.partition("@")
    sampler, steps = head.split(":")
    task.diffusion.start_strength = float(strength or 1.0)
    return task.predict_pair(pred.model, pair, "cpu", 64, SamplingConfig(sampler, int(steps), int(samples or 1), 0))


def score_setting(pred, pairs, setting: str) -> tuple[list[dict], list[float]]:
    """Each pair's scores (as `rtgen evaluate` gives them: DiffMa scoring, per-patient 0.5/99.5
    percentile normalisation on the MR grid) and the seconds each prediction took, model loaded."""
    from rtgen.tasks.image_base import score_volume

    rows, seconds = [], []
    for pair in pairs:
        t0 = time.perf_counter()
        vol = predict_setting(pred, pair, setting)
        seconds.append(time.perf_counter() - t0)
        rows.append(score_volume(vol, pair))
    return rows, seconds


def central_slices(ps, n: int):
    """A patient's prepared slices (`PatientSlices`) cut to its `n` central kept slices: what a smoke
    run predicts (the rest of the volume is then predicted as zero dose)."""
    import dataclasses

    if len(ps.keep) <= n:
        return ps
    start = (len(ps.keep) - n) // 2
    cut = slice(start, start + n)
    return dataclasses.replace(ps, keep=ps.keep[cut], images=ps.images[cut], masks=ps.masks[cut],
                               doses=None if ps.doses is None else ps.doses[cut])


def blurred_doses(split: Path, out: Path, sigma: float = 1.5) -> Path:
    """Stand-in predictions for a smoke run: each patient's reference dose blurred (Gaussian, `sigma`
    voxels) inside its possible-dose mask, written as `out/pt_N.csv` in the submission format."""
    from scipy import ndimage

    from rtgen.data import PatientSplit, write_dose_csv

    for p in PatientSplit(split, load_ct=False, progress=False):
        write_dose_csv(out / f"{p.id}.csv", ndimage.gaussian_filter(p.dose, sigma) * p.possible_dose_mask)
    return out


def central_pair_slices(pair, n: int):
    """A CT/MR pair (`ImagePair`) cut to its `n` central axial slices, its affine moved with them:
    what a smoke run predicts and scores."""
    import dataclasses

    import numpy as np

    depth = pair.ct.shape[2]
    if depth <= n:
        return pair
    z0 = (depth - n) // 2
    cut = (slice(None), slice(None), slice(z0, z0 + n))
    affine = pair.affine.copy()
    affine[:3, 3] = (pair.affine @ np.array([0.0, 0.0, z0, 1.0]))[:3]
    return dataclasses.replace(pair, ct=pair.ct[cut], affine=affine,
                               **{k: getattr(pair, k)[cut] for k in ("mr", "body", "fov") if getattr(pair, k) is not None})


# DiffMa's network variants, as overrides of configs/diffma_cpu.yaml (or of the refiner's config): the
# rows of the DiffMa table (benchmarks/diffma_table.py) and of the refiner table (diffma_refiner_table.py)
DIFFMA_VARIANTS = {
    "diffma": ([], "DiffMa: spiral scan, soft mask, CBAM fusion"),
    "dit": (["model.name=diffma_dit"], "DiT baseline (self-attention)"),
    "vim_raster": (["model.name=diffma_vim"], "ViM bidirectional raster (ablation: raster vs spiral)"),
    "vmamba": (["model.name=diffma_vmamba"], "VMamba 4-direction cross scan"),
    "zigma": (["model.name=diffma_zigma"], "ZigMa zigzag"),
    "no_soft_mask": (["model.soft_mask=false"], "ablation: soft mask off"),
    "sum_fusion": (["model.fusion=sum"], "ablation: branches summed, no CBAM"),
}
