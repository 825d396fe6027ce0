"""Predictors and writers: a checkpoint in, predictions on disk out."""
from rtgen.inference.predictor import Predictor, load_predictor  # noqa: F401
