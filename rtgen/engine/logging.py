"""The engine's own hooks: log.csv, TensorBoard (when installed) and one console line per epoch."""

from __future__ import annotations

import csv
import io

from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_write_text
from rtgen.core.hooks import Hook


class CSVLog(Hook):
    """log.csv, rewritten atomically after every epoch with the whole history."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        buf = io.StringIO()
        columns = list(dict.fromkeys(k for r in trainer.history for k in r))  # epochs without validation lack val_*
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(trainer.history)
        atomic_write_text(trainer.run_dir / "log.csv", buf.getvalue())


class TensorBoardLog(Hook):
    """TensorBoard scalars when the optional `tensorboard` package is installed; nothing otherwise."""

    def __init__(self):
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra: pip install 'rtgen[tensorboard]'
            return
        self.writer = SummaryWriter(str(trainer.run_dir / "tensorboard"))

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                self.writer.add_scalar(k, float(v), trainer.step)
        self.writer.flush()

    def on_fit_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class ConsoleLog(Hook):
    """One line per epoch: loss, the task's own training statistics, throughput and its validation metrics."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not trainer.progress:
            return
        task = trainer.task
        rate = row.get(f"{task.item_name}_per_s", 0.0)
        metrics = ", ".join(f"val {k.removeprefix('val_').replace('_', ' ')} {v:.3f}{' ' + task.metric_unit(k) if task.metric_unit(k) else ''}"
                            for k, v in row.items() if k.startswith("val_"))
        own = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in row.items()
                      if k.startswith("train_") and k not in ("train_loss", "train_seconds"))  # Task.epoch_stats
        tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}{own}, {rate:.1f} {task.item_name}/s, {metrics}"
                   + ("  (best)" if row["best"] else ""))
