"""Dose and image metrics, summaries, plots and rewards."""
from rtgen.evaluation.dose import EvaluationResult, evaluate_folders, homogeneity_by_target  # noqa: F401
