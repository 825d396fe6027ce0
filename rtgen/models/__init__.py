"""Models that ship inside rtgen."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rtgen.errors import RtgenError

SHIPPED = "mamba_unet_v2_openkbp"
SHIPPED_BY_MODEL = {"mamba_unet_v2": "mamba_unet_v2_openkbp", "md_dose": "md_dose_openkbp"}


def shipped_model_dir(name: str = SHIPPED) -> Path:
    """A shipped model's folder, by folder name or by model name (`mamba_unet_v2`, `md_dose`)."""
    name = SHIPPED_BY_MODEL.get(name, name)
    path = Path(str(resources.files("rtgen") / "models" / name))
    if not (path / "model.safetensors").is_file():
        raise RtgenError(f"{path}: the shipped model is missing from this installation")
    return path
