"""Diffusion core shared by every diffusion model in rtgen: schedules, parameterisations, loss, samplers.

Models never import sampler code and samplers never import models: a sampler only calls
`denoise(x_t, t)`.
"""

from rtgen.diffusion.loss import diffusion_loss, snr_weight
from rtgen.diffusion.parameterization import PREDICTIONS, add_noise, convert, target, to_x0_eps
from rtgen.diffusion.samplers import CLIPPING_SAMPLERS, SAMPLERS, Trajectory, make_scheduler, sample
from rtgen.diffusion.schedule import NoiseSchedule

__all__ = ["CLIPPING_SAMPLERS", "NoiseSchedule", "PREDICTIONS", "SAMPLERS", "Trajectory", "add_noise", "convert", "diffusion_loss", "make_scheduler",
           "sample", "snr_weight", "target", "to_x0_eps"]
