"""Exact conversions between what a denoiser may predict: noise (epsilon), clean sample (x0), velocity (v).

With x_t = a x0 + s eps, a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar), and v = a eps - s x0:
    x0 = a x_t - s v,   eps = s x_t + a v,   x0 = (x_t - s eps) / a,   eps = (x_t - a x0) / s.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("epsilon", "sample", "v_prediction")  # diffusers' names


def _coefs(alpha_bar: torch.Tensor, like: torch.Tensor):
    ab = alpha_bar.to(like.device, torch.float64).reshape(-1, *([1] * (like.dim() - 1)))
    return ab.sqrt(), (1.0 - ab).sqrt()


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(alpha_bar, x0)
    return (a * x0 + s * eps).to(x0.dtype)


def target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """What a denoiser trained for `prediction` should output."""
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "v_prediction":
        a, s = _coefs(alpha_bar, x0)
        return (a * eps - s * x0).to(x0.dtype)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def to_x0_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str):
    """(x0, eps) implied by a prediction of kind `prediction` at x_t."""
    a, s = _coefs(alpha_bar, x_t)
    p, x = pred.to(torch.float64), x_t.to(torch.float64)
    if prediction == "epsilon":
        x0, eps = (x - s * p) / a, p
    elif prediction == "sample":
        x0, eps = p, (x - a * p) / s
    elif prediction == "v_prediction":
        x0, eps = a * x - s * p, s * x + a * p
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return x0.to(pred.dtype), eps.to(pred.dtype)


def convert(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Re-express a prediction of kind `src` as kind `dst`."""
    x0, eps = to_x0_eps(pred, x_t, alpha_bar, src)
    return target(x0, eps, alpha_bar, dst)
