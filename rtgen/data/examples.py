"""The example patients bundled with rtgen (two OpenKBP validation patients, compressed CSV)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def example_patients_dir() -> Path:
    """The two OpenKBP validation patients bundled with rtgen (pt_204 and pt_219)."""
    return Path(str(resources.files("rtgen") / "examples" / "openkbp"))
