"""Training throughput, peak memory, parameter counts and prediction time of the dose UNets.

    python benchmarks/bench_train_predict.py [--device cpu|cuda] [--batch 8] [--steps 5] [--skip-paper]
    python benchmarks/bench_train_predict.py --smoke

Models are the three `configs/*.yaml` skeletons at the CPU configuration of the shipped model
(channels 16-32-64-128, token mixer from level 2) and at the MambaUNetV2 paper's configuration
(32-64-128-256, mixer at every level). Inputs are 20-channel 128 x 128 slices; prediction time is
for one whole bundled patient (features + all slices touching the possible dose mask, no flips).
"""

from __future__ import annotations

import argparse
import time

import common
import torch

from rtgen.bench.ssm import PeakMemory, machine_description
from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.inference.predictor import Predictor
from rtgen.models import count_parameters
from rtgen.tasks.dose_base import masked_smooth_l1
from rtgen.tasks.dose_regression import DoseRegressionTask

MODELS = ("mamba_unet_v2", "unet", "transformer_unet")
SETTINGS = {
    "cpu config (16-32-64-128, mixer from level 2)": dict(channels=(16, 32, 64, 128), mixer_from_level=2),
    "paper config (32-64-128-256, mixer at every level)": dict(channels=(32, 64, 128, 256), mixer_from_level=0),
}


def train_throughput(model, device, batch, steps, warmup=2):
    x = torch.randn(batch, 20, 128, 128, device=device)
    y = torch.rand(batch, 1, 128, 128, device=device) * 2 - 1
    m = torch.ones_like(y)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(warmup):
        opt.zero_grad()
        masked_smooth_l1(model(x), y, m).backward()
        opt.step()
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            masked_smooth_l1(model(x), y, m).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return steps * batch / seconds, pm.peak


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-paper", action="store_true", help="only the CPU configuration")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--smoke", action="store_true", help="seconds: unet at the CPU configuration, batch 1, one step, 4 slices predicted")
    a = ap.parse_args(argv)
    if a.smoke:
        a.skip_paper, a.models, a.batch, a.steps = True, ["unet"], 1, 1
    device = torch.device(a.device)
    patient = read_patient(example_patients_dir() / "pt_204")
    print(f"machine: {machine_description(a.device)}")
    print(f"{'setting':<52}{'model':<18}{'params':>10}{'train slices/s':>16}{'peak MB':>9}{'predict s/patient':>19}")
    for setting, kw in SETTINGS.items():
        if a.skip_paper and "paper" in setting:
            continue
        for name in a.models:
            torch.manual_seed(0)
            task = DoseRegressionTask(name, dict(kw), {})
            model = task.build_model().to(device)
            rate, peak = train_throughput(model, device, a.batch, a.steps, 0 if a.smoke else 2)
            predictor = Predictor(task, model.eval(), {}, None, device)
            if a.smoke:  # features of the whole patient, the network on 4 of its slices
                t0 = time.perf_counter()
                task.predict_volumes(model, common.central_slices(task.patient_slices(patient), 4), 32, device)
            else:
                predictor.predict(patient)  # warm-up
                t0 = time.perf_counter()
                predictor.predict(patient)
            pred_s = time.perf_counter() - t0
            peak_s = "-" if peak is None else f"{peak:.0f}"
            print(f"{setting:<52}{name:<18}{count_parameters(model) / 1e6:>9.2f}M{rate:>16.1f}{peak_s:>9}{pred_s:>19.1f}")


if __name__ == "__main__":
    main()
