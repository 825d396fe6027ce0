"""Figures people would rather look at than read: DVH curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rtgen.core.atomic import atomic_path  # noqa: E402
from rtgen.core.structures import STRUCTURES  # noqa: E402
from rtgen.dosimetry.dvh import cumulative_dvh  # noqa: E402

COLOURS = dict(zip(STRUCTURES, plt.get_cmap("tab10").colors))


def plot_dvh(
    path: str | Path,
    structures: dict[str, np.ndarray],
    reference: np.ndarray,
    prediction: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Cumulative DVH per structure: reference solid, prediction dashed, one colour per structure."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    top = float(max(reference.max(), prediction.max() if prediction is not None else 0.0)) + 1.0
    for name in STRUCTURES:
        mask = structures.get(name)
        if mask is None or not mask.any():
            continue
        colour = COLOURS[name]
        x, y = cumulative_dvh(np.asarray(reference, np.float64)[mask], max_dose=top)
        ax.plot(x, y, color=colour, lw=1.6, label=name)
        if prediction is not None:
            x, y = cumulative_dvh(np.asarray(prediction, np.float64)[mask], max_dose=top)
            ax.plot(x, y, color=colour, lw=1.6, ls="--")
    ax.set(xlabel="Dose (Gy)", ylabel="Volume (%)", xlim=(0, top), ylim=(0, 101), title=title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if prediction is not None:
        handles += [plt.Line2D([], [], color="k", lw=1.6), plt.Line2D([], [], color="k", lw=1.6, ls="--")]
        labels += ["reference", "prediction"]
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
