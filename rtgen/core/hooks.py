"""Hooks: what runs around training without the trainer knowing it (logs, figures, custom checks).

A hook overrides the methods it needs. The trainer calls them on the process that validates
(rank 0); tasks add their own (e.g. a DVH figure per epoch) and users pass more to `Trainer`.
"""

from __future__ import annotations


class Hook:
    def on_fit_start(self, trainer) -> None:
        """After set-up (data, model, optimiser, resumed state), before the first epoch."""

    def on_validation_end(self, trainer, metrics: dict, artefacts) -> None:
        """After each validation, with the task's metrics and whatever its validation returned beside them."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """After each epoch and its checkpoints, with the log row (epoch, losses, metrics, lr, best)."""

    def on_fit_end(self, trainer) -> None:
        """When training stops (last epoch or early stopping)."""
