"""Training for models fitted in one call (gradient-boosted trees) under the same contract as the
gradient trainer: the same config, the same run folder (resolved_config.yaml, config.json, the
weights, MODEL_CARD.md), and a folder that is removed if the run fails before it is complete.

Why a second runner and not a branch in `Trainer`: a tree model has no epochs, optimiser, EMA or
resume; forcing it through the epoch loop would make the trainer know about one task. The task
says which it needs (`fits_directly`), and `runner_for` picks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rtgen import __version__
from rtgen.core.atomic import atomic_write_text
from rtgen.core.checkpoint import write_config
from rtgen.core.errors import RtgenError
from rtgen.core.registry import count_parameters
from rtgen.engine.config import RunConfig, save_config
from rtgen.engine.trainer import Trainer, _hardware, seed_everything


class DirectFit:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 hooks: list | None = None):
        if resume:
            raise RtgenError(f"{run_dir}: a {cfg.task.name} model is fitted in one call; there is nothing to resume")
        self.cfg, self.task, self.run_dir, self.progress = cfg, cfg.task, Path(run_dir), progress

    def fit(self) -> dict:
        created = not self.run_dir.exists()
        try:
            return self._fit()
        except BaseException:
            if created and not (self.run_dir / "config.json").exists():
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _fit(self) -> dict:
        import torch

        cfg, task = self.cfg, self.task
        seed_everything(cfg.train.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "resolved_config.yaml")
        t0 = time.perf_counter()
        model, metrics, data = task.fit(cfg.train.seed, self.progress)
        seconds = time.perf_counter() - t0
        summary = {
            **task.checkpoint_config(),
            "model": {"name": task.model_name, "architecture": task.arch_dict(), "parameters": count_parameters(model)},
            "training": {"config": cfg.to_dict(), "rtgen_version": __version__, **data, "seconds": round(seconds, 1),
                         "hardware": _hardware(torch.device("cpu"), 1)},
            "validation": metrics,
        }
        task.save_model(model, self.run_dir)
        atomic_write_text(self.run_dir / "MODEL_CARD.md", task.model_card(summary))
        write_config(self.run_dir / "config.json", summary)  # last: its presence marks a complete run
        metric = task.selection_metric
        return {"best": metrics[metric], "metric": metric, "epochs": 1, "history": []}


def runner_for(cfg: RunConfig):
    """The runner a task needs: one call to `task.fit`, or the gradient trainer."""
    return DirectFit if getattr(cfg.task, "fits_directly", False) else Trainer
