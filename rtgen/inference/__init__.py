"""Predictors and writers: a checkpoint in, predictions on disk out.

`Predictor`, `load_predictor` and `resolve_model` are imported on first use, so that the light
modules here (`catalogue`, `writers`) can be imported without torch."""

import importlib

__all__ = ["Predictor", "load_predictor", "resolve_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("rtgen.inference.predictor"), name)
    raise AttributeError(f"module 'rtgen.inference' has no attribute {name!r}")
