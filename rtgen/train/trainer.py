"""The training engine behind `rtgen train`: one model, slices in, whole-patient validation out.

Runs on CPU, one GPU, or several processes under torchrun (DistributedDataParallel, gloo on
CPU, nccl on GPU): rank 0 alone validates, logs and writes checkpoints.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from rtgen import __version__
from rtgen.atomic import atomic_write_text
from rtgen.data.patients import find_patients, load_patient
from rtgen.data.slices import SliceDataset, build_slices, default_augmentation
from rtgen.dosimetry import OpenKBPScores
from rtgen.errors import RtgenError
from rtgen.nets import count_parameters
from rtgen.predict import assemble_volume, autocast_for, resolve_device
from rtgen.tasks import make_task, masked_smooth_l1, predict_batches  # noqa: F401 (re-exported)
from rtgen.train.checkpoint import check_and_load, load_state, load_weights, save_state, save_weights, write_config
from rtgen.train.config import RunConfig, save_config
from rtgen.train.model_card import write_model_card


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


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
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

    # ------------------------------------------------------------ set-up

    def _patients(self, folder: str, limit: int | None, what: str) -> list[Path]:
        if not folder:
            raise RtgenError(f"data.{what} is not set in the config")
        paths = find_patients(folder)
        return paths[:limit] if limit else paths

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        train_paths = self._patients(cfg.data.train, cfg.data.max_train_patients, "train")
        val_paths = self._patients(cfg.data.val, cfg.data.max_val_patients, "val")
        workers = cfg.data.feature_workers
        self.train_set = SliceDataset(
            build_slices(train_paths, cfg.features, workers=workers, progress=self.progress, desc="train features"),
            transform=default_augmentation() if cfg.data.augment else None, seed=cfg.train.seed + self.rank,
        )
        self.val_slices = build_slices(val_paths, cfg.features, workers=workers, progress=self.progress,
                                       desc="validation features")
        self.val_refs = [load_patient(p, load_ct=False) for p in val_paths] if self.main else []
        self.task = make_task(cfg.model, cfg.diffusion, in_channels=cfg.features.n_channels)
        self.arch = self.task.arch
        self.model = self.task.build().to(self.device)
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
            raise RtgenError(f"{len(self.train_set)} training slices are fewer than one batch of "
                             f"{cfg.train.batch_size} x {self.world} processes")
        self.steps_per_epoch = per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(cfg.train.warmup_steps, cfg.train.epochs * per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling; kept for resume
        self.epoch, self.step, self.best, self.stale, self.history = 0, 0, math.inf, 0, []
        self.elapsed = 0.0
        if self.resume:
            self._load_last()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "resolved_config.yaml")

    # ------------------------------------------------------------ checkpoints

    def _state(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "best": self.best, "stale": self.stale,
            "elapsed": self.elapsed, "history": self.history,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
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
        self.scaler.load_state_dict(s["scaler"])
        if self.ema and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        self.epoch, self.step, self.best, self.stale = s["epoch"], s["step"], s["best"], s["stale"]
        self.elapsed, self.history = s["elapsed"], s["history"]
        torch.set_rng_state(s["rng"]["torch"])
        np.random.set_state(tuple(s["rng"]["numpy"]))
        random.setstate(s["rng"]["python"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])

    def _eval_model(self):
        return self.ema.module if self.ema else self.model

    def _save_best(self, scores: dict) -> None:
        save_weights(self.run_dir / "model.safetensors", self._eval_model().state_dict())
        write_config(self.run_dir / "config.json", self.summary(scores))
        write_model_card(self.run_dir, self.summary(scores))

    def summary(self, scores: dict) -> dict:
        cfg = self.cfg
        return {
            "model": {"name": cfg.model["name"], "architecture": self.arch,
                      "parameters": count_parameters(self.model)},
            **({"diffusion": cfg.diffusion.to_dict()} if self.task.diffusion is not None else {}),
            "features": cfg.features.to_dict(),
            "normalisation": {"ct_window_hu_plus_1024": list(cfg.features.ct_window),
                              "dose_range_gy": [0.0, cfg.features.dose_max_gy], "scaled_range": [-1.0, 1.0]},
            "training": {"config": cfg.to_dict(), "rtgen_version": __version__,
                         "train_patients": len(self.train_set.patients), "train_slices": len(self.train_set),
                         "val_patients": len(self.val_slices), "epochs_run": self.epoch,
                         "steps": self.step, "seconds": round(self.elapsed, 1),
                         "hardware": _hardware(self.device, self.world)},
            "validation": scores,
        }

    # ------------------------------------------------------------ loops

    def train_epoch(self) -> dict:
        cfg = self.cfg.train
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + self.epoch)
        sampler = (DistributedSampler(self.train_set, shuffle=True, seed=cfg.seed, drop_last=True)
                   if self.distributed else RandomSampler(self.train_set, generator=gen))
        if self.distributed:
            sampler.set_epoch(self.epoch)
        if self.train_set.transform is not None:  # augmentation draws depend on (seed, epoch, rank) only
            self.train_set.transform.set_random_state(cfg.seed * 1000 + self.epoch * 17 + self.rank)
        loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.cfg.data.num_workers, collate_fn=_collate)
        self.ddp.train()
        total, n, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not self.progress, leave=False)
        for i, batch in enumerate(loader):
            if i >= self.steps_per_epoch:
                break
            x, y, m = (batch[k].to(self.device, non_blocking=True) for k in ("image", "dose", "mask"))
            with autocast_for(self.device, self.amp):
                loss = self.task.loss(self.ddp, x, y, m)
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
            bar.set_postfix(loss=f"{total / n:.4f}", slices_per_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        return {"train_loss": total / max(1, n), "train_seconds": seconds,
                "slices_per_s": n * cfg.batch_size * self.world / max(seconds, 1e-9)}

    def validate(self) -> tuple[dict, list]:
        model = self._eval_model()
        scores = OpenKBPScores()
        volumes = []
        for ps, ref in zip(self.val_slices, self.val_refs):
            pred = predict_batches(self.task, model, ps.images, self.cfg.train.val_batch_size, self.device,
                                   autocast=autocast_for(self.device, self.amp))
            vol = assemble_volume(ps, pred.mean(0), self.cfg.features.dose_max_gy)
            scores.add(ref.id, ref.dose, vol, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
            if not volumes:
                volumes.append(vol)
        return {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score}, volumes

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the configured epochs (or early stop). `stop_after` ends this process after that
        many epochs, as an interruption would; `--resume` then continues identically."""
        self.setup()
        cfg = self.cfg.train
        writer = _tensorboard(self.run_dir) if self.main else None
        last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, self.epoch + stop_after)
        while self.epoch < last_epoch and self.stale < cfg.patience:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            if self.main:
                val, volumes = self.validate()
                improved = val["dose_score"] < self.best
                if improved:
                    self.best, self.stale = val["dose_score"], 0
                else:
                    self.stale += 1
                self.elapsed += time.perf_counter() - t0
                row = {"epoch": self.epoch, "step": self.step, **stats, "val_dose_score": val["dose_score"],
                       "val_dvh_score": val["dvh_score"], "lr": self.sched.get_last_lr()[0],
                       "best": improved, "elapsed_s": self.elapsed}
                self.history.append(row)
                self._log(row, writer, volumes)
                if improved:
                    self._save_best({**val, "epoch": self.epoch})
                self._save_last()
            if self.distributed:
                flags = torch.tensor([self.stale, self.elapsed], dtype=torch.float64)
                dist.broadcast(flags, 0)
                self.stale, self.elapsed = int(flags[0]), float(flags[1])
        if writer:
            writer.close()
        if self.distributed:
            dist.barrier()
        return {"best_dose_score": self.best, "epochs": self.epoch, "history": self.history}

    def _log(self, row: dict, writer, volumes) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run_dir / "log.csv", buf.getvalue())
        if writer:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    writer.add_scalar(k, float(v), self.step)
            writer.flush()
        if volumes and self.val_refs:
            from rtgen.plots import plot_dvh

            ref = self.val_refs[0]
            plot_dvh(self.run_dir / "figures" / f"dvh_epoch{self.epoch:03d}.png", ref.structures, ref.dose,
                     volumes[0], title=f"{ref.id}, epoch {self.epoch}: reference vs prediction")
        if self.progress:
            tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, {row['slices_per_s']:.1f} slices/s, "
                       f"val dose score {row['val_dose_score']:.3f} Gy, DVH score {row['val_dvh_score']:.3f} Gy"
                       + ("  (best)" if row["best"] else ""))


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "dose", "mask")}


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"{world} process(es) on {platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
