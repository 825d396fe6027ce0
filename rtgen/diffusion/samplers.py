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

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class Trajectory:
    """What a sampler did, step by step, for methods that learn from samples (RL post-training).

    `states[i]` is the input x_t of step i at `timesteps[i]`, `outputs[i]` the model's prediction
    there (epsilon, x0 or velocity, whatever it was trained for). `log_probs[i]` is, per sample,
    log p(x_{t-1} | x_t) of the step taken; only stochastic steps (DDIM with eta > 0, which at
    eta = 1 is DDPM's posterior) have one, else it is None.
    """

    timesteps: list[torch.Tensor] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] | None = None


def _ddim_step_std(sched, t: torch.Tensor, eta: float) -> torch.Tensor:
    """Standard deviation eta * sigma_t of a DDIM step from t (eq. 16 of Song et al.), as diffusers steps."""
    prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    a_t = sched.alphas_cumprod[int(t)]
    a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    return eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)).sqrt()


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
    return_trajectory: bool = False,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Draw samples of `shape` from noise. Deterministic for a given generator state.

    With `start` and `strength` < 1 (DDIM only), sampling begins from `start` noised to the timestep
    strength * T (SDEdit, Meng et al. 2022) and spends all `steps` between there and 0: a refinement
    of a known estimate rather than a draw from pure noise. With `return_trajectory` also the
    per-step states, model outputs and (stochastic DDIM steps) log-probabilities; the samples are
    the same as without it.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    partial = strength < 1.0
    if partial and (start is None or sampler != "ddim"):
        raise ValueError("a strength below 1 needs a start and the ddim sampler (it keeps no multistep state)")
    sched = make_scheduler(sampler, schedule, prediction, clip)
    if partial:  # the trailing `steps` of a finer grid: every step lies in [0, strength * T]
        sched.set_timesteps(min(schedule.timesteps, math.ceil(steps / strength)), device=device)
        sched.timesteps = sched.timesteps[-steps:]
    else:
        sched.set_timesteps(steps if sampler != "ddpm" or steps < schedule.timesteps else schedule.timesteps,
                            device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * sched.init_noise_sigma
    if partial:
        x = sched.add_noise(start.to(device, x.dtype), x, sched.timesteps[:1].repeat(shape[0]))
    extra = ({"eta": eta, "generator": generator, "use_clipped_model_output": clip is not None}
             if sampler == "ddim" else {"generator": generator} if sampler == "ddpm" else {})
    stochastic = return_trajectory and sampler == "ddim" and eta > 0
    traj = Trajectory(log_probs=[] if stochastic else None) if return_trajectory else None
    for t in tqdm(sched.timesteps, desc=f"{sampler} sampling", disable=not progress, leave=False):
        model_in = sched.scale_model_input(x, t)
        tt = t.expand(shape[0]) if t.dim() == 0 else t
        out = denoise(model_in, tt)
        if traj is not None:
            traj.timesteps.append(t)
            traj.states.append(x)
            traj.outputs.append(out)
        if stochastic:  # the same draw diffusers would make, kept to score the step
            z = randn_tensor(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            x_next = sched.step(out, t, x, **{**extra, "generator": None, "variance_noise": z}).prev_sample
            std = _ddim_step_std(sched, t, eta).to(out.device, torch.float64)
            logp = -0.5 * z.double() ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
            traj.log_probs.append(logp.flatten(1).sum(1))
            x = x_next
        else:
            x = sched.step(out, t, x, **extra).prev_sample
    return (x, traj) if traj is not None else x
