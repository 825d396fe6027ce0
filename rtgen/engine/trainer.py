"""The training engine behind `rtgen train`: any task, one loop, hooks for the rest.

The trainer knows a task's interface (rtgen.tasks.base) and nothing of its data: it asks the task
for a dataset, a loss per batch, validation metrics and the metric that selects the best
checkpoint. It owns the optimisation (AdamW, warm-up then cosine, gradient clipping, EMA of
weights and buffers, bf16 autocast on CUDA), early stopping, checkpoints with bitwise resume,
and DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU): rank 0 alone validates,
logs and writes. Logs, figures and anything else run as hooks (rtgen.core.hooks).
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from rtgen import __version__
from rtgen.core.atomic import atomic_write_text
from rtgen.core.checkpoint import check_and_load, load_state, load_weights, save_state, save_weights, write_config
from rtgen.core.devices import autocast_for, resolve_device, to_channels_last
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.registry import count_parameters
from rtgen.engine.config import RunConfig, save_config
from rtgen.engine.logging import ConsoleLog, CSVLog, TensorBoardLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def ema_with_warmup(decay: float):
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over n updates, so early
    averages are not dominated by the random initialisation."""

    @torch.no_grad()
    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):  # counters such as BatchNorm's num_batches_tracked
            if not a.is_floating_point():
                a.copy_(c)

    return update


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_init(init: str, task, source: str):
    """(weights file, config.json) of `train.init`, a run of the same task and network; another task or
    model is refused before any data is read, naming both."""
    from rtgen.core.checkpoint import read_config, resolve_checkpoint

    weights, config_path = resolve_checkpoint(init)
    config = read_config(config_path)
    theirs = (config.get("task"), (config.get("model") or {}).get("name"))
    if theirs != (task.name, task.model_name):
        raise ConfigError(source, f"train.init {init} is a {theirs[0]} run of {theirs[1]}, not a {task.name} run "
                                  f"of {task.model_name}")
    return weights, config


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 hooks: list | None = None):
        self.cfg, self.task, self.run_dir, self.resume = cfg, cfg.task, Path(run_dir), resume
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.main = self.rank == 0
        self.progress = progress and self.main
        device = resolve_device(cfg.train.device)
        if device.type == "cuda" and self.distributed:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        self.device = device
        self.amp = cfg.train.amp and device.type == "cuda"
        self.cpu_amp = cfg.train.cpu_amp and device.type == "cpu"
        self.hooks = [CSVLog(), TensorBoardLog(), *(hooks or []), ConsoleLog()] if self.main else []
        self.created_run_dir = False

    # ------------------------------------------------------------ set-up

    def setup(self) -> None:
        cfg, task = self.cfg, self.task
        seed_everything(cfg.train.seed)
        init, init_config = (check_init(cfg.train.init, task, cfg.source)
                             if cfg.train.init and (not self.resume or task.init_on_resume) else (None, None))
        if init_config is not None:
            task.start_from(init_config)
        self.train_set = task.train_dataset(cfg.train.seed, self.rank, self.progress)
        self.val_data = task.val_data(self.progress) if self.main else []
        self.model = task.build_model().to(self.device)
        if init is not None:  # train.init: start from another run's weights
            check_and_load(self.model, load_weights(init), init)
        if cfg.train.channels_last:
            to_channels_last(self.model)
        task.prepare_model(self.model, self.train_set, self.device, pretrain=not self.resume, progress=self.progress)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                              if self.device.type == "cuda" else None)
                    if self.distributed else self.model)
        self.ema = (AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.train.ema_decay), use_buffers=True)
                    if cfg.train.ema_decay else None)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=cfg.train.lr)
        per_epoch = len(self.train_set) // (cfg.train.batch_size * self.world)
        if cfg.train.max_steps_per_epoch:
            per_epoch = min(per_epoch, cfg.train.max_steps_per_epoch)
        if per_epoch < 1:
            raise RtgenError(f"{cfg.source}: {len(self.train_set)} training {task.item_name} are fewer than one batch "
                             f"of {cfg.train.batch_size} x {self.world} processes")
        self.steps_per_epoch = per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(cfg.train.warmup_steps, cfg.train.epochs * per_epoch))
        self.epoch, self.step, self.stale, self.history = 0, 0, 0, []
        self.best = -math.inf if task.higher_is_better else math.inf
        self.elapsed = 0.0
        if self.resume:
            self._load_last()
        if self.main:
            self.created_run_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "resolved_config.yaml")

    # ------------------------------------------------------------ checkpoints

    def _state(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "best": self.best, "stale": self.stale,
            "elapsed": self.elapsed, "history": self.history,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _save_last(self) -> None:
        last = self.run_dir / "last"
        save_weights(last / "model.safetensors", self.model.state_dict())
        save_state(last, self._state())

    def _load_last(self) -> None:
        last = self.run_dir / "last"
        if not (last / "training_state.json").is_file():
            raise RtgenError(f"{self.run_dir}: nothing to resume (no last/training_state.json)")
        check_and_load(self.model, load_weights(last / "model.safetensors"), last / "model.safetensors")
        s = load_state(last)
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        if self.ema and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        self.epoch, self.step, self.best, self.stale = s["epoch"], s["step"], s["best"], s["stale"]
        self.elapsed, self.history = s["elapsed"], s["history"]
        torch.set_rng_state(s["rng"]["torch"])
        np.random.set_state(tuple(s["rng"]["numpy"]))
        random.setstate(s["rng"]["python"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    def _save_best(self, metrics: dict) -> None:
        summary = self.summary(metrics)
        save_weights(self.run_dir / "model.safetensors", self.eval_model().state_dict())
        self.task.write_run_files(self.run_dir)  # what else prediction needs (e.g. a base model), before config.json
        write_config(self.run_dir / "config.json", summary)
        atomic_write_text(self.run_dir / "MODEL_CARD.md", self.task.model_card(summary))

    def summary(self, metrics: dict) -> dict:
        """config.json: what rebuilds the model for prediction, how it was trained, how it scored."""
        return {
            **self.task.checkpoint_config(),
            "model": {"name": self.task.model_name, "architecture": self.task.arch_dict(),
                      "parameters": count_parameters(self.model)},
            "training": {"config": self.cfg.to_dict(), "rtgen_version": __version__,
                         **self.task.data_summary(self.train_set, self.val_data),
                         "epochs_run": self.epoch, "steps": self.step, "seconds": round(self.elapsed, 1),
                         "hardware": _hardware(self.device, self.world)},
            "validation": metrics,
        }

    # ------------------------------------------------------------ loops

    def train_epoch(self) -> dict:
        cfg = self.cfg.train
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + self.epoch)
        sampler = (DistributedSampler(self.train_set, shuffle=True, seed=cfg.seed, drop_last=True)
                   if self.distributed else RandomSampler(self.train_set, generator=gen))
        if self.distributed:
            sampler.set_epoch(self.epoch)
        # a training set with random draws (its own, or its transform's) has set_random_state: they depend
        # on (seed, epoch, rank) only, so a resumed run repeats them
        if hasattr(self.train_set, "set_random_state"):
            self.train_set.set_random_state(cfg.seed * 1000 + self.epoch * 17 + self.rank)
        self.task.start_epoch(cfg.seed, self.epoch, self.step, self.rank)
        loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=self.task.collate, **self.task.loader_options())
        self.ddp.train()
        total, n, t0 = 0.0, 0, time.perf_counter()
        unit = self.task.item_name
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not self.progress, leave=False)
        for i, batch in enumerate(loader):
            if i >= self.steps_per_epoch:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast_for(self.device, self.amp, self.cpu_amp):
                loss = self.task.loss(self.ddp, batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            if self.ema:
                self.ema.update_parameters(self.model)
            self.step += 1
            total, n = total + loss.item(), n + 1
            rate = n * cfg.batch_size * self.world / (time.perf_counter() - t0)
            bar.set_postfix({"loss": f"{total / n:.4f}", f"{unit}/s": f"{rate:.1f}"})
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        return {"train_loss": total / max(1, n), "train_seconds": seconds,
                f"{unit}_per_s": n * cfg.batch_size * self.world / max(seconds, 1e-9), **self.task.epoch_stats()}

    def validate(self) -> tuple[dict, object]:
        return self.task.validate(self.eval_model(), self.val_data, self.device, self.cfg.train.val_batch_size,
                                  autocast_for(self.device, self.amp, self.cpu_amp))

    def _improved(self, value: float) -> bool:
        return value > self.best if self.task.higher_is_better else value < self.best

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the configured epochs (or early stop). `stop_after` ends this process after that
        many epochs, as an interruption would; `--resume` then continues identically. A run that
        fails before its first checkpoint removes the run folder it created."""
        try:
            return self._fit(stop_after)
        except BaseException:
            if self.main and self.created_run_dir and not (self.run_dir / "last").exists():
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _fit(self, stop_after: int | None) -> dict:
        self.setup()
        cfg, metric = self.cfg.train, self.task.selection_metric
        for hook in self.hooks:
            hook.on_fit_start(self)
        last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, self.epoch + stop_after)
        while self.epoch < last_epoch and self.stale < cfg.patience:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            # validate every `val_every` epochs and after the last one: short epochs (a big batch on a
            # GPU) would otherwise spend most of their time sampling validation images
            validating = self.epoch % cfg.val_every == 0 or self.epoch >= last_epoch
            if self.main:
                val, artefacts, improved = {}, None, False
                if validating:
                    val, artefacts = self.validate()
                    improved = self._improved(val[metric])
                    if improved:
                        self.best, self.stale = val[metric], 0
                    else:
                        self.stale += 1
                self.elapsed += time.perf_counter() - t0
                row = {"epoch": self.epoch, "step": self.step, **stats, **{f"val_{k}": v for k, v in val.items()},
                       "lr": self.sched.get_last_lr()[0], "best": improved, "elapsed_s": self.elapsed}
                self.history.append(row)
                if validating:
                    for hook in self.hooks:
                        hook.on_validation_end(self, val, artefacts)
                if improved:
                    self._save_best({**val, "epoch": self.epoch})
                self._save_last()
                for hook in self.hooks:
                    hook.on_epoch_end(self, row)
            if self.distributed:
                flags = torch.tensor([self.stale, self.elapsed], dtype=torch.float64)
                dist.broadcast(flags, 0)
                self.stale, self.elapsed = int(flags[0]), float(flags[1])
        for hook in self.hooks:
            hook.on_fit_end(self)
        if self.distributed:
            dist.barrier()
        return {"best": self.best, "metric": metric, "epochs": self.epoch, "history": self.history}


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"{world} process(es) on {platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
