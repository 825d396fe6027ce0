"""Rectified-flow (flow-matching) schedule, velocity objective and ODE samplers (DiffKT3D sec. 3.3, app. B.6).

Convention, fixed for every flow model in rtgen:
    x_t = (1 - t) x0 + t eps,  t in [0, 1] (t = 1 pure noise),  v = dx_t/dt = eps - x0,
    x0 = x_t - t v,  eps = x_t + (1 - t) v.
This is diffusers' flow-matching convention (`sigma` = t, `flow_prediction` = v) without its 1000-scaling:
`velocity_fn(x_t, t)` always receives t in [0, 1]; a network whose time embedding expects DDPM-scale
timesteps (Wan) is given `1000 * t` by its own wrapper.

Flow shift s (SD3 / Wan): t -> s t / (1 + (s - 1) t), monotone, fixes 0 and 1 and for s > 1 spends
more of training and sampling at high noise. It is applied both to the training times (`sample_t`) and
to the sampling grid (`inference_times`).

Samplers. "euler" and "heun" are written here (about 30 lines) rather than driven through diffusers'
`FlowMatchEulerDiscreteScheduler`, which does the same Euler update but: (i) its default
`set_timesteps(n)` grid with a shift is not a shifted linspace to 0 (it shifts an already shifted
sigma_min a second time; 5 steps at s = 3 end at t = 0.009), so our grid has to be handed to it unshifted
through `sigmas=`; (ii) it always steps in float32, so float64 checks lose their exactness; (iii) it is
stateful (step index) and keyed by 1000-scaled float timesteps; (iv) its Heun sibling has no `sigmas=`
path at all, so Euler and Heun would run on different grids. `tests/test_flow_nft.py` checks that our
Euler equals diffusers' Euler step for step on the same grid. "dpmpp" (DPM-Solver++ 2M, the paper's
few-step ODE family) does come from diffusers (`DPMSolverMultistepScheduler` with flow sigmas and
`flow_prediction`): its grid is diffusers' (it starts at t = 1 - 1/1000, shifted, not at exactly 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from rtgen.diffusion.samplers import Trajectory

FLOW_SAMPLERS = ("euler", "heun", "dpmpp")
FLOW_PREDICTIONS = ("velocity", "sample")  # what a network predicts: v = eps - x0, or x0 itself
T_SAMPLINGS = ("uniform", "logit_normal")


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """t as a (N, 1, ..., 1) tensor (or a scalar) in `like`'s dtype and device, broadcasting over a batch."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() == 1 else t


@dataclass(frozen=True)
class FlowSchedule:
    """Training times and sampling grid of a rectified flow; see the module docstring for the convention.

    `t_sampling`: "uniform" draws t ~ U(0, 1); "logit_normal" draws t = sigmoid(m + s n), n ~ N(0, 1)
    (SD3), with m, s = `logit_mean`, `logit_std`. Either is then shifted by `shift`.
    """

    shift: float = 1.0
    t_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        if not self.shift > 0:
            raise ValueError(f"flow shift must be positive, got {self.shift}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")

    def shift_t(self, t: torch.Tensor) -> torch.Tensor:
        """s t / (1 + (s - 1) t)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n training times in [0, 1], drawn on the CPU (reproducible for a generator) then moved."""
        if self.t_sampling == "uniform":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
        return self.shift_t(u).to(device, dtype)

    @staticmethod
    def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x_t = (1 - t) x0 + t eps; t a scalar or one per sample."""
        t = _bcast(t, x0)
        return (1 - t) * x0 + t * eps

    @staticmethod
    def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = eps - x0, what the network is trained to predict."""
        return eps - x0

    @staticmethod
    def to_x0(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return x_t - _bcast(t, x_t) * v

    @staticmethod
    def to_eps(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return x_t + (1 - _bcast(t, x_t)) * v

    def inference_times(self, steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """steps + 1 times from 1 down to 0: the shifted uniform grid of an ODE sampler."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self.shift_t(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).to(dtype)

    def to_dict(self) -> dict:
        return asdict(self)


def flow_matching_loss(pred_v: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of weight * (pred_v - (eps - x0))^2.

    `weight` is per sample (shape (N,)) or broadcastable to `pred_v` (a mask, a voxel weight); the mean is
    then a weighted mean, sum(w err) / sum(w), so a 0/1 mask averages inside it.
    """
    err = (pred_v - FlowSchedule.velocity_target(x0, eps)).pow(2)
    if weight is None:
        return err.mean()
    w = weight.to(err)
    if w.dim() == 1 and w.shape[0] == err.shape[0] and err.dim() > 1:
        w = w.reshape(-1, *([1] * (err.dim() - 1)))
    w = w.expand_as(err)
    return (w * err).sum() / w.sum().clamp(min=torch.finfo(err.dtype).tiny)


def flow_loss(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
              schedule: FlowSchedule = FlowSchedule(), weight: torch.Tensor | None = None,
              generator: torch.Generator | None = None, prediction: str = "velocity") -> torch.Tensor:
    """One flow-matching training loss: draw t and eps (on the CPU, from `generator`), noise x0, regress v
    (or, for a network predicting "sample", regress x0 with the same draws: a loss equally weighted
    over t, where the velocity error of an x0 error grows as 1/t)."""
    t = schedule.sample_t(x0.shape[0], generator, x0.device, x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    pred = velocity_fn(schedule.add_noise(x0, eps, t), t)
    if prediction == "sample":  # the v-loss machinery with eps = 0 compares pred with x0 itself
        return flow_matching_loss(-pred, x0, torch.zeros_like(x0), weight)
    return flow_matching_loss(pred, x0, eps, weight)


def as_velocity(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], prediction: str = "velocity"):
    """The velocity field of a network that predicts `prediction`: itself for "velocity", and
    v = (x_t - x0_hat) / t for "sample" (samplers never ask at t = 0; t is floored at 1e-4)."""
    if prediction not in FLOW_PREDICTIONS:
        raise ValueError(f"prediction must be one of {FLOW_PREDICTIONS}, got {prediction!r}")
    if prediction == "velocity":
        return fn

    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t - fn(x_t, t)) / _bcast(t.clamp_min(1e-4), x_t)
    return velocity


def _dpmpp_scheduler(schedule: FlowSchedule):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=schedule.shift, prediction_type="flow_prediction",
                                       algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")


@torch.no_grad()
def sample_flow(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor | tuple[int, ...],
    schedule: FlowSchedule = FlowSchedule(),
    steps: int = 10,
    method: str = "euler",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Integrate dx/dt = velocity_fn(x, t) from t = 1 (noise) to t = 0 (data) in `steps` steps.

    `noise` is the initial x_1 (used as given, its dtype and device kept) or a shape, drawn from
    `generator` on the CPU in `dtype` then moved to `device`: deterministic for a generator state.
    `velocity_fn(x_t, t)` gets t as one value per sample (shape (N,), x's dtype). Euler costs `steps`
    calls; Heun (2nd order, trapezoidal corrector) 2 steps - 1, its last step to t = 0 being Euler so
    the network is never asked for v at t = 0 (where e.g. v = (x - x*)/t is singular); "dpmpp" `steps`.

    With `return_trajectory` also a `Trajectory`: `timesteps[i]` (scalar t), `states[i]` (x at it) and
    `outputs[i]` (the velocity there) for each step's first evaluation; the samples are the same.
    """
    if method not in FLOW_SAMPLERS:
        raise ValueError(f"method must be one of {FLOW_SAMPLERS}, got {method!r}")
    if isinstance(noise, torch.Tensor):
        x = noise.clone()
    else:
        x = torch.randn(tuple(noise), generator=generator, dtype=dtype).to(device)
    n = x.shape[0]
    traj = Trajectory() if return_trajectory else None

    def v_at(x_, t_):
        return velocity_fn(x_, t_.to(x_.device, x_.dtype).expand(n))

    if method == "dpmpp":
        sched = _dpmpp_scheduler(schedule)
        sched.set_timesteps(steps, device=x.device)
        for i, ts in enumerate(tqdm(sched.timesteps, desc="dpmpp flow sampling", disable=not progress, leave=False)):
            t = sched.sigmas[i]
            v = v_at(x, t)
            if traj is not None:
                traj.timesteps.append(t)
                traj.states.append(x)
                traj.outputs.append(v)
            x = sched.step(v, ts, x).prev_sample
        return (x, traj) if traj is not None else x

    times = schedule.inference_times(steps).to(x.device)
    for i in tqdm(range(steps), desc=f"{method} flow sampling", disable=not progress, leave=False):
        t, t_next = times[i], times[i + 1]
        dt = (t_next - t).to(x.dtype)
        v = v_at(x, t)
        if traj is not None:
            traj.timesteps.append(t)
            traj.states.append(x)
            traj.outputs.append(v)
        x_next = x + dt * v
        if method == "heun" and t_next > 0:
            x_next = x + dt * 0.5 * (v + v_at(x_next, t_next))
        x = x_next
    return (x, traj) if traj is not None else x


def gaussian_velocity(mu: float, sigma: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact velocity E[eps - x0 | x_t] for data x0 ~ N(mu, sigma^2) (per element), a reference field.

    With a = 1 - t and var = a^2 sigma^2 + t^2: v = (t - a sigma^2) / var * (x - a mu) - mu. Its ODE maps
    x_1 = z exactly to x_0 = mu + sigma z.
    """

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = _bcast(t, x)
        a = 1 - tt
        var = a * a * sigma**2 + tt * tt
        return (tt - a * sigma**2) / var * (x - a * mu) - mu

    return v


__all__ = [
    "FLOW_PREDICTIONS",
    "FLOW_SAMPLERS",
    "T_SAMPLINGS",
    "FlowSchedule",
    "as_velocity",
    "flow_loss",
    "flow_matching_loss",
    "gaussian_velocity",
    "sample_flow",
]
