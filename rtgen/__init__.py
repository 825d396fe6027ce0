"""rtgen: radiotherapy dose prediction and image synthesis with state-space and diffusion models.

The Python API (`rtgen.api`), importable from here: `load`, `read_patient`, `evaluate`,
`list_models`, and the `Model` and `Prediction` they return. Importing rtgen is light: the API
module, torch and the models are imported when first used.
"""

__version__ = "0.1.0"

__all__ = ["Model", "Prediction", "__version__", "evaluate", "list_models", "load", "read_patient"]

_API = {"Model", "Prediction", "evaluate", "list_models", "load", "read_patient"}


def __getattr__(name: str):
    if name in _API or name == "api":
        import importlib

        api = importlib.import_module("rtgen.api")  # not `from rtgen import api`: that would ask this function
        value = api if name == "api" else getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'rtgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
