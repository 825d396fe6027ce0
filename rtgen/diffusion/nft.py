"""ScardNFT (DiffKT3D sec. 3.4, eqs. 10-13): DiffusionNFT (Zheng et al. 2025) negative-aware fine-tuning of a
flow-matching velocity model on its own scored samples.

Convention: that of `rtgen.diffusion.flow` (x_t = (1 - t) x0 + t eps, v = eps - x0).

For samples x0 drawn from the old policy with optimality probabilities r in [0, 1], re-noised at random t,
the two implicit policies (eq. 11) mix the frozen old velocity v_old = sg(v_old(x_t, t)) with the trained
one v_theta:
    v+ = (1 - beta) v_old + beta v_theta,      v- = (1 + beta) v_old - beta v_theta,
and the dual loss (eq. 12) is
    L_nft = E[ r ||v+ - v||^2 + (1 - r) ||v- - v||^2 ],   v = eps - x0 (the flow target of eq. 6).
Signs: v+ is the policy moved *towards* v_theta, fitted to well-scored samples; v- its reflection through
v_old, fitted to badly scored ones, so the gradient on v_theta pulls towards the target on good samples and
pushes away from it on bad ones (d||v- - v||^2 / d v_theta = -2 beta (v- - v)). This is DiffusionNFT's
choice (positive = (1 - beta) old + beta new, negative = (1 + beta) old - beta new) and the paper's text
("higher likelihood for higher-rewarded samples, penalises lower-rewarded ones"). At r = 1/2 the gradient
is 2 beta^2 (v_theta - v_old): a pull towards the old policy, so uninformative samples only regularise.
The loss is as eq. 12 writes it, so its gradient on v_theta scales with beta. DiffusionNFT's reference code
further normalises it (a 1/beta factor, an adaptive per-sample weight from the x0 error); those are not in
eq. 12 and are left to `lam` (eq. 13) and `weight`.

Optimality (eq. 10): r = clip(1/2 + 1/2 (R - mean_case R) / Z, 0, 1), the centring per case (the candidates
drawn under the same conditions), Z a batch or running (`RunningDispersion`) estimate of reward spread.
Final objective (eq. 13): L = L_diffusion + lambda L_nft, L_diffusion the plain flow-matching loss on
reference (clinical) doses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from rtgen.diffusion.flow import FLOW_PREDICTIONS, FlowSchedule, flow_loss

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.expand_as(err).to(err.dtype)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1.0)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, v_target: torch.Tensor, r: torch.Tensor, beta: float = 0.1,
             weight: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 12: mean over samples of r ||v+ - v_target||^2 + (1 - r) ||v- - v_target||^2.

    `v_old` is detached here. The squared norms are means over each sample's elements (inside `mask` when
    given); `weight` (N,) multiplies each sample's term.
    """
    if not 0 < beta:
        raise ValueError(f"beta must be positive, got {beta}")
    v_old = v_old.detach()
    v_pos = (1 - beta) * v_old + beta * v_theta
    v_neg = (1 + beta) * v_old - beta * v_theta
    pos = _per_sample((v_pos - v_target).pow(2), mask)
    neg = _per_sample((v_neg - v_target).pow(2), mask)
    r = r.to(pos).reshape(-1)
    per = r * pos + (1 - r) * neg
    if weight is not None:
        per = per * weight.to(per).reshape(-1)
    return per.mean()


def _groups(group, n: int, device) -> tuple[torch.Tensor, list]:
    """(inverse index, keys) of the case ids; n samples in one group when None."""
    if group is None:
        return torch.zeros(n, dtype=torch.long, device=device), [None]
    if isinstance(group, torch.Tensor):
        keys, inv = torch.unique(group.reshape(-1), return_inverse=True)
        return inv.to(device), [k.item() for k in keys]
    index: dict[Hashable, int] = {}
    inv = [index.setdefault(g, len(index)) for g in group]
    return torch.tensor(inv, dtype=torch.long, device=device), list(index)


def _group_stats(rewards: torch.Tensor, inv: torch.Tensor, k: int):
    """Per-group mean and (biased) std, broadcast back to the samples, plus counts per group."""
    count = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, inv, torch.ones_like(rewards))
    mean = torch.zeros_like(count).index_add_(0, inv, rewards) / count
    dev = rewards - mean[inv]
    var = torch.zeros_like(count).index_add_(0, inv, dev * dev) / count
    return mean, var.sqrt(), count, dev


class RunningDispersion:
    """EMA of the within-case reward spread, the Z of eq. 10.

    `update(rewards, group)` takes one batch: the pooled within-case std (the rms of R - mean_case R over
    cases with 2 or more candidates) is folded in as z <- m z + (1 - m) z_batch (the first batch sets z).
    With `per_case`, one EMA is kept per case id instead (Z(c) of eq. 10, for cases met again across
    rounds); `value(group)` then gives each sample its case's Z (cases never seen: the pooled EMA).
    """

    def __init__(self, momentum: float = 0.9, per_case: bool = False):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.per_case = momentum, per_case
        self.z: float | None = None
        self.case_z: dict = {}

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else self.momentum * old + (1 - self.momentum) * new

    def update(self, rewards: torch.Tensor, group=None) -> RunningDispersion:
        rewards = rewards.detach().reshape(-1).double()
        inv, keys = _groups(group, rewards.numel(), rewards.device)
        _, std, count, dev = _group_stats(rewards, inv, len(keys))
        multi = count[inv] > 1
        if multi.any():
            self.z = self._ema(self.z, dev[multi].pow(2).mean().sqrt().item())
        if self.per_case:
            for j, key in enumerate(keys):
                if count[j] > 1:
                    self.case_z[key] = self._ema(self.case_z.get(key), std[j].item())
        return self

    def value(self, group=None) -> torch.Tensor | float:
        """Z: a float, or with `per_case` and a `group`, one value per sample."""
        if self.z is None:
            raise RuntimeError("RunningDispersion has seen no batch with two or more candidates of a case")
        if not self.per_case or group is None:
            return self.z
        inv, keys = _groups(group, 0, "cpu")
        per_key = torch.tensor([self.case_z.get(k, self.z) for k in keys], dtype=torch.float64)
        return per_key[inv]


def optimality_from_rewards(rewards: torch.Tensor, group: torch.Tensor | Sequence[Hashable] | None = None,
                            dispersion: float | str | RunningDispersion | None = None,
                            eps: float = 1e-6) -> torch.Tensor:
    """Eq. 10: r = clip(1/2 + 1/2 (R - mean_case R) / Z, 0, 1), one per sample (rewards of shape (N,)).

    `group`: the case id of each sample (a tensor or a list of hashables); None: all one case.
    `dispersion` sets Z: None, the pooled within-case std of this batch; "case", each case's own std
    (GRPO / DiffusionNFT's per-prompt normalisation); a float, fixed; a `RunningDispersion`, updated with
    this batch first, then read. Z is floored at `eps`, so a case whose candidates all score alike gets
    r = 1/2. Returned in the rewards' dtype, detached.
    """
    rewards = rewards.detach().reshape(-1)
    r64 = rewards.double()
    inv, keys = _groups(group, r64.numel(), r64.device)
    _, std, count, dev = _group_stats(r64, inv, len(keys))
    if dispersion is None:
        multi = count[inv] > 1
        z = dev[multi].pow(2).mean().sqrt() if multi.any() else torch.zeros((), dtype=torch.float64)
    elif isinstance(dispersion, str):
        if dispersion != "case":
            raise ValueError(f"dispersion must be None, 'case', a float or a RunningDispersion, got {dispersion!r}")
        z = std[inv]
    elif isinstance(dispersion, RunningDispersion):
        z = torch.as_tensor(dispersion.update(r64, group).value(group), dtype=torch.float64)
    else:
        z = torch.as_tensor(float(dispersion), dtype=torch.float64)
    z = z.to(r64.device).clamp(min=eps)
    return (0.5 + 0.5 * dev / z).clamp(0.0, 1.0).to(rewards.dtype)


def nft_step_loss(velocity_fn: VelocityFn, old_velocity_fn: VelocityFn, x0: torch.Tensor, r: torch.Tensor,
                  schedule: FlowSchedule = FlowSchedule(), beta: float = 0.1, weight: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  prediction: str = "velocity") -> torch.Tensor:
    """L_nft on scored samples x0: draw t (schedule) and eps (CPU, `generator`), re-noise, evaluate the
    old model without gradient and the current one with it, and apply `nft_loss`.

    `prediction="sample"`: the two functions predict x0, and the implicit policies mix x0 predictions
    and regress the sample itself. At the same x_t that is the velocity loss times t^2, since
    v = (x_t - x0) / t is affine in x0: the same policies, with the loss weighted equally over t as
    the network was trained (`flow_loss`). In velocity units an x0 error costs 1/t^2, and the
    few draws of small t would dominate each step."""
    if prediction not in FLOW_PREDICTIONS:
        raise ValueError(f"prediction must be one of {FLOW_PREDICTIONS}, got {prediction!r}")
    t = schedule.sample_t(x0.shape[0], generator, x0.device, x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = schedule.add_noise(x0, eps, t)
    with torch.no_grad():
        old = old_velocity_fn(x_t, t)
    target = x0 if prediction == "sample" else schedule.velocity_target(x0, eps)
    return nft_loss(velocity_fn(x_t, t), old, target, r, beta, weight, mask)


def nft_objective(velocity_fn: VelocityFn, old_velocity_fn: VelocityFn, samples: torch.Tensor, r: torch.Tensor,
                  schedule: FlowSchedule = FlowSchedule(), beta: float = 0.1, lam: float = 1.0,
                  reference: torch.Tensor | None = None, reference_velocity_fn: VelocityFn | None = None,
                  mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  prediction: str = "velocity") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ScardNFT's objective, eq. 13: L = L_diffusion + lam * L_nft; returns (L, {"diffusion": ..., "nft": ...}) (parts detached).

    L_nft is `nft_step_loss` on the scored `samples`; L_diffusion the flow-matching loss on `reference`
    doses (0 when None), through `reference_velocity_fn` when their conditioning batch differs from the
    samples' (default: `velocity_fn`). Both closures carry their own conditioning. With
    `prediction="sample"` the functions predict x0 and both terms are x0 losses (`nft_step_loss`).
    """
    l_nft = nft_step_loss(velocity_fn, old_velocity_fn, samples, r, schedule, beta, mask=mask, generator=generator,
                          prediction=prediction)
    if reference is not None:
        l_diff = flow_loss(reference_velocity_fn or velocity_fn, reference, schedule, generator=generator,
                           prediction=prediction)
    else:
        l_diff = torch.zeros((), dtype=l_nft.dtype, device=l_nft.device)
    total = l_diff + lam * l_nft
    return total, {"diffusion": l_diff.detach(), "nft": l_nft.detach()}


__all__ = ["RunningDispersion", "nft_loss", "nft_objective", "nft_step_loss", "optimality_from_rewards"]
