"""Dose and image metrics, summaries, plots and training-figure hooks."""
from rtgen.evaluation.dose import EvaluationResult, evaluate_folders, homogeneity_by_target  # noqa: F401
from rtgen.imaging.similarity import image_metrics, normalise_percentiles  # noqa: F401
