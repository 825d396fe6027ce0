"""Training hooks that draw: the engine calls them, the CLI chooses them for the task at hand."""

from __future__ import annotations

from rtgen.core.hooks import Hook
from rtgen.evaluation.plots import plot_dvh
from rtgen.tasks.dose_base import DoseTask


class DVHFigureHook(Hook):
    """A DVH figure of the first validation patient after every epoch (reference vs prediction)."""

    def on_validation_end(self, trainer, metrics: dict, artefacts) -> None:
        if not artefacts:
            return
        ref, volume = artefacts[0]
        plot_dvh(trainer.run_dir / "figures" / f"dvh_epoch{trainer.epoch:03d}.png", ref.structures, ref.dose, volume,
                 title=f"{ref.id}, epoch {trainer.epoch}: reference vs prediction")


def figure_hooks(task) -> list[Hook]:
    """The figures worth drawing during training for this task."""
    return [DVHFigureHook()] if isinstance(task, DoseTask) else []
