"""Samplers behind one small interface, all from diffusers: DDPM ancestral, DDIM (eta), DPM-Solver++ (2M)
and the probability-flow ODE of the VP SDE (Heun's method in sigma space, Karras et al. 2022).

A sampler knows nothing about architectures: it calls `denoise(x_in, t)` and expects the
prediction kind the model was trained for. `clip` bounds every predicted clean sample to
[-clip, clip] (the data range), as DDPM's reference sampler does: an under-trained noise predictor
at t near T implies clean samples far outside the data, and multistep solvers that reuse them
diverge. DDPM and DDIM use diffusers' `clip_sample`, DPM-Solver++ its thresholding with a fixed
bound; diffusers' Heun scheduler (`ode`) has no such option, so `clip` is refused there.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from rtgen.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim", "dpmpp", "ode")
CLIPPING_SAMPLERS = ("ddpm", "ddim", "dpmpp")  # those whose diffusers scheduler can bound predicted samples


def make_scheduler(name: str, schedule: NoiseSchedule, prediction: str = "epsilon", clip: float | None = None):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler

    kw = {**schedule.diffusers_kwargs(), "prediction_type": prediction}
    clip_kw = {"clip_sample": clip is not None, "clip_sample_range": clip or 1.0}
    if name == "ddpm":
        return DDPMScheduler(**kw, **clip_kw, variance_type="fixed_small")
    if name == "ddim":
        return DDIMScheduler(**kw, **clip_kw, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpmpp":  # diffusers' thresholding with sample_max_value 1 is plain clipping to [-1, 1]
        if clip not in (None, 1.0):
            raise ValueError(f"the dpmpp sampler clips predicted samples to [-1, 1] only, got clip={clip}")
        thr = {"thresholding": True, "sample_max_value": clip, "dynamic_thresholding_ratio": 1.0} if clip else {}
        return DPMSolverMultistepScheduler(**kw, **thr, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing", final_sigmas_type="zero")
    if name == "ode":
        if clip is not None:  # name not in CLIPPING_SAMPLERS
            raise ValueError("the ode sampler (diffusers' Heun scheduler) cannot clip predicted samples; use clip=None")
        return HeunDiscreteScheduler(**kw, timestep_spacing="trailing")
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


@torch.no_grad()
def sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    schedule: NoiseSchedule = NoiseSchedule(),
    sampler: str = "ddim",
    steps: int = 50,
    prediction: str = "epsilon",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    clip: float | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` from noise. Deterministic for a given generator state."""
    sched = make_scheduler(sampler, schedule, prediction, clip)
    sched.set_timesteps(steps if sampler != "ddpm" or steps < schedule.timesteps else schedule.timesteps, device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * sched.init_noise_sigma
    extra = ({"eta": eta, "generator": generator, "use_clipped_model_output": clip is not None}
             if sampler == "ddim" else {"generator": generator} if sampler == "ddpm" else {})
    for t in tqdm(sched.timesteps, desc=f"{sampler} sampling", disable=not progress, leave=False):
        model_in = sched.scale_model_input(x, t)
        tt = t.expand(shape[0]) if t.dim() == 0 else t
        x = sched.step(denoise(model_in, tt), t, x, **extra).prev_sample
    return x
