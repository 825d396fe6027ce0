"""Image similarity scores (SSIM, PSNR, MSE), the imaging counterpart of `rtgen.dosimetry`: pure
scoring that tasks (validation) and evaluation (folders of predictions) share."""

from rtgen.imaging.scores import image_scores
from rtgen.imaging.similarity import image_metrics, normalise_percentiles

__all__ = ["image_metrics", "image_scores", "normalise_percentiles"]
