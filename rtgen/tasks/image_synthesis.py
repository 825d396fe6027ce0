"""CT -> MR latent diffusion (DiffMa and its baselines): denoise MR latents given CT latents.

Slices (see `image_base`) are encoded once by a frozen autoencoder (`latent.autoencoder`; TAEF2, shipped
in rtgen) and the diffusion runs on latents scaled to unit variance (`latent.shift`, `latent.scale`
are measured on the training MR latents at the start of a run and kept in config.json). The
network is any model with `forward(x_t, t, ct_latent)`; DiffMa's vision embedder (`model.embedder`)
is first pre-trained alone with the cross InfoNCE loss (paper eq. 7-8) for
`diffusion.embedder_pretrain_steps` steps, then frozen, as the paper does.

Prediction samples the MR latent with any of rtgen's samplers (default: the probability-flow ODE
in `diffusion.val_steps` steps), decodes it and puts the slices back on the CT's grid. The MR of
a patient is never an input: only the CT is encoded at prediction time.

With `base.run` (not in the paper), an image regression (the UNet) is run on the CT first, and
the diffusion refines its MR, the base: the base's latent joins the CT latent as the condition,
and the network's x0 prediction is the base's latent plus its output. Why: the latent regressions
learnt by every diffusion row stopped at 29-34 % SSIM, below the image-space UNet (46-48 %); with
a base, an untrained network (zero-initialised output) samples the base exactly, and training
can only add what the UNet missed. The decoded MR is the base plus the change the sample makes to
the base's decoding (`base.decode_as_change`), so the autoencoder's own blur is not added to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_path
from rtgen.core.checkpoint import resolve_checkpoint
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.migration import run_part
from rtgen.core.registry import register_task
from rtgen.data.sources.image_pairs import find_pairs
from rtgen.diffusion import NoiseSchedule, diffusion_loss, sample
from rtgen.tasks.base import copy_run, load_run
from rtgen.tasks.image_base import FlippedSlices, ImageDataConfig, ImageTask, PairSlices, as_batches, training_slices

AUTOENCODER_DIR = "autoencoder"  # where a run folder keeps its trained autoencoder
BASE_DIR = "base"  # where a run folder keeps its base (an image_regression run)


def _autoencoder_run(run: str, source: str) -> tuple[Path, Path, dict]:
    """(weights, config.json path, config) of a trained image_autoencoder run, or one clear error."""
    from rtgen.core.checkpoint import read_config, resolve_checkpoint

    if not run:
        raise ConfigError(source, "latent.autoencoder is autoencoder_kl but latent.autoencoder_run (a trained "
                                  "image_autoencoder run folder) is not set")
    weights, config_path = resolve_checkpoint(run)
    config = read_config(config_path)
    if config.get("task") != "image_autoencoder":
        raise ConfigError(source, f"latent.autoencoder_run: {run} is a {config.get('task')!r} run, not an "
                                  "image_autoencoder one")
    return weights, config_path, config


@dataclass
class LatentConfig:
    autoencoder: Literal["taef2", "autoencoder_kl"] = "taef2"  # frozen: TAEF2 (rtgen/hub/taef2) or a trained one
    autoencoder_run: str = ""  # for autoencoder_kl: an image_autoencoder run (rtgen train configs/diffma_autoencoder.yaml)
    shift: float | None = None  # latent mean over training MR slices; None: measured when training starts
    scale: float | None = None  # 1 / latent std over training MR slices; None: measured likewise
    cpu_bf16: bool = False  # predict and validate with TAEF2 in bfloat16 where the CPU has it natively (docs/models/diffma.md)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthBaseConfig:
    run: str = ""  # an image_regression run folder whose MR the diffusion refines; "": none (the paper's DiffMa)
    decode_as_change: bool = True  # MR = base + D(z) - D(E(base)), not D(z): zero change gives the base back
    flip_average: bool = False  # the base is the mean of its predictions of the slice and its 3 in-plane flips
    # image_regression runs trained on parts of data.train: a training slice's base comes from the first that
    # did not see its patient (out of fold), so it is as wrong in training as on new patients; () uses `run`
    train_runs: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthDiffusionConfig:
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: Annotated[int, Field(ge=2, le=100_000)] = 1000
    prediction: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    val_sampler: Literal["ddpm", "ddim", "dpmpp", "ode"] = "ode"  # probability-flow ODE (Heun), as the paper
    val_steps: Annotated[int, Field(ge=1, le=1000)] = 10
    embedder_pretrain_steps: Annotated[int, Field(ge=0, le=1_000_000)] = 200  # InfoNCE steps before freezing
    embedder_lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    tau: Annotated[float, Field(gt=0, le=10)] = 0.07  # InfoNCE temperature
    seed: Annotated[int, Field(ge=0)] = 0  # noise of validation sampling (predictions are deterministic per seed)
    # below 1 (with a base, ddim only): start from the base's latent noised to start_strength * T (SDEdit)
    # instead of pure noise, and spend every step below that
    start_strength: Annotated[float, Field(gt=0, le=1)] = 1.0

    @property
    def schedule_obj(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps)

    def to_dict(self) -> dict:
        return asdict(self)


@register_task("image_synthesis")
class ImageSynthesisTask(ImageTask):
    """Latent diffusion from CT slices to MR slices, scored by SSIM/PSNR on each patient's grid."""

    sections: ClassVar[dict[str, type]] = {"data": ImageDataConfig, "latent": LatentConfig,
                                           "diffusion": SynthDiffusionConfig, "base": SynthBaseConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data", "latent", "diffusion", "base")
    stochastic: ClassVar[bool] = True
    latent: LatentConfig
    diffusion: SynthDiffusionConfig
    base: SynthBaseConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = self.diffusion.schedule_obj
        self._autoencoder = None
        self._base_model: dict[str, tuple] = {}  # run folder -> (task, frozen network), loaded once each
        self._fold_patients: dict[str, set[str]] = {}  # base.train_runs folder -> the patients it trained on
        if self.base.run and self.diffusion.prediction != "sample":
            raise ConfigError(self.source, "base.run refines a base's latent through the x0 prediction: it needs "
                                           f"diffusion.prediction: sample, not {self.diffusion.prediction}")
        self.refuse_data(("rotate_deg", "scale"), "the latent model trains on latents encoded once and cached; the "
                                                  "random affine is for image_regression")
        self.refuse_data(("ct_windows",), "the latent model encodes the CT through its autoencoder; extra CT windows "
                                          "reach it through a base run trained with them (base.run)")
        self.refuse_data(("context_slices",), "the latent model encodes one CT slice at a time; a 2.5D CT reaches it "
                                              "through a base run trained with context (base.run)")
        if self.diffusion.start_strength < 1 and not (self.base.run and self.diffusion.val_sampler == "ddim"):
            raise ConfigError(self.source, "diffusion.start_strength below 1 starts sampling from the base: it needs "
                                           "base.run and diffusion.val_sampler: ddim")

    def implied_architecture(self) -> dict:
        latent = self.settings["latent"]
        if latent.autoencoder == "taef2":
            channels, factor = 32, 8
        else:  # read from the trained autoencoder's config, without loading its weights
            arch = _autoencoder_run(latent.autoencoder_run, self.source)[2]["model"]["architecture"]
            channels, factor = int(arch["latent_channels"]), 2 ** (len(arch["channels"]) - 1)
        with_base = 2 if self.settings["base"].run else 1  # the base's latent joins the CT's as condition
        return {"in_channels": channels, "ct_channels": with_base * channels,
                "latent_size": self.settings["data"].size // factor}

    # ---- the autoencoder
    @property
    def autoencoder(self):
        """The frozen autoencoder (rtgen.models.frozen_autoencoders): TAEF2, or the AutoencoderKL run
        `latent.autoencoder_run`."""
        if self._autoencoder is None:
            from rtgen.models.frozen_autoencoders import FrozenTAEF2, native_cpu_bf16

            self._autoencoder = (FrozenTAEF2(cpu_bf16=self.latent.cpu_bf16 and native_cpu_bf16())
                                 if self.latent.autoencoder == "taef2" else self._trained_autoencoder())
        return self._autoencoder

    def _trained_autoencoder(self):
        from rtgen.models.frozen_autoencoders import FrozenAutoencoderKL
        from rtgen.tasks import task_from_checkpoint

        weights, config_path, config = _autoencoder_run(self.latent.autoencoder_run, self.source)
        return FrozenAutoencoderKL(task_from_checkpoint(config, str(config_path)).load_model(weights))

    @torch.no_grad()
    def encode(self, slices01: np.ndarray, batch_size: int = 32, progress: bool = False,
               exact: bool = False) -> np.ndarray:
        """(N, S, S) in [0, 1] -> (N, C, S/f, S/f) raw latents (float32). `exact`: in float32 even with
        `latent.cpu_bf16`, as for the training latents, so that training targets and the cache are one
        kind whatever the CPU; bf16 speeds up prediction (and validation, which measures it)."""
        out = []
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a fixed preprocessing: wherever it is fastest
        autoencoder = self.autoencoder.to(device)
        with autoencoder.exact() if exact else contextlib.nullcontext():
            for x in tqdm(as_batches(slices01, batch_size, device), desc="encoding", unit="batch",
                          disable=not progress, leave=False):
                out.append(autoencoder.encode(x[:, None]).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(N, C, h, w) raw latents -> (N, f h, f w) grey slices in [0, 1]."""
        autoencoder = self.autoencoder.to(latents.device)
        return autoencoder.decode(latents.float())[:, 0].float().cpu().numpy()  # float: autocast may make it bf16

    # ---- the base
    def base_model(self, run: str | None = None, what: str = "base.run"):
        """(task, network) of `base.run` (or another base run), loaded once; it must be an
        image_regression run trained on slices like this model's."""
        run = run or self.base.run
        if run not in self._base_model:
            task, model, config = load_run(run, what, self.source)
            if config.get("task") != "image_regression":
                raise ConfigError(self.source, f"{what}: {run} is a {config.get('task')!r} run, not an "
                                               "image_regression one (e.g. configs/diffma_cpu_base.yaml)")
            if task.data.spec != self.data.spec:
                raise ConfigError(self.source, f"{what}: {run} was trained on slices {task.data.spec}, "
                                               f"this model on {self.data.spec}: they must match")
            # frozen here, so its weights may take the memory order CPU convolutions prefer (the UNet: 2x
            # faster on 2 cores in `python benchmarks/bench_taef2.py --unet RUN`)
            self._base_model[run] = (task, model.eval().requires_grad_(False).to(memory_format=torch.channels_last))
        return self._base_model[run]

    def _fold_run(self, patient: str) -> str:
        """The first of `base.train_runs` whose training folder does not hold `patient`."""
        for run in self.base.train_runs:
            if run not in self._fold_patients:  # listed once per run, not once per patient
                task = self.base_model(run, "base.train_runs")[0]
                seen = find_pairs(task.data.train)[:task.data.max_train_patients or None]
                self._fold_patients[run] = {p.name for p in seen}
            if patient not in self._fold_patients[run]:
                return run
        raise ConfigError(self.source, f"base.train_runs: every run was trained on patient {patient}; each training "
                                       "patient needs a run that did not see it (train them on disjoint folds)")

    def base_slices(self, ct01: np.ndarray, batch_size: int = 32, run: str | None = None) -> np.ndarray:
        """The base's MR slices in [0, 1] for CT slices in [0, 1] (from `base.run`, or `run`)."""
        task, model = self.base_model(run)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.base.flip_average:
            return task.predict_flip_average(model.to(device), ct01, device, batch_size)
        return task.predict_slices(model.to(device), ct01, device, batch_size)

    def condition(self, ct01: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """(scaled condition latents, base MR slices or None) of CT slices: the CT latent, and with a
        base the base's latent after it on the channel axis."""
        ct = self._scaled(self.encode(ct01, batch_size))
        if not self.base.run:
            return ct, None
        base = self.base_slices(ct01, batch_size)
        return np.concatenate([ct, self._scaled(self.encode(base, batch_size))], 1), base

    def _cached(self, name: str, key: list, make) -> dict[str, np.ndarray]:
        """Arrays `make()` returns, read from or written (atomically) to `data.cache` under a key of the
        autoencoder, the slice settings and `key`; "" as the cache folder recomputes every run."""
        autoencoder_id = self.latent.autoencoder
        if self.latent.autoencoder == "autoencoder_kl":  # a retrained autoencoder must not reuse old latents
            autoencoder_id = hashlib.sha1(_autoencoder_run(self.latent.autoencoder_run, self.source)[0].read_bytes()
                                          ).hexdigest()
        digest = hashlib.sha1(json.dumps([autoencoder_id, asdict(self.data.spec), key], default=str).encode()).hexdigest()[:16]
        path = Path(self.data.cache) / f"{name}-{digest}.npz" if self.data.cache else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        arrays = make()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return arrays

    def _encoded(self, pairs: list[PairSlices], what: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Raw (MR, CT) latents of all slices of `pairs`, cached (`_cached`)."""
        z = self._cached(f"latents-{what}", [(p.id, p.ct.shape, float(p.ct.sum()), float(p.mr.sum())) for p in pairs],
                         lambda: {"mr": self.encode(np.concatenate([p.mr for p in pairs]), progress=progress, exact=True),
                                  "ct": self.encode(np.concatenate([p.ct for p in pairs]), progress=progress, exact=True)})
        return z["mr"], z["ct"]

    def _scaled(self, z: np.ndarray) -> np.ndarray:
        return ((z - self.latent.shift) * self.latent.scale).astype(np.float32)

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> FlippedSlices:
        pairs = self.load_split(self.data.train, self.data.max_train_patients, "train", progress)
        mr, ct = self._encoded(pairs, "train", progress)  # cached for every slice
        keep = training_slices(pairs, self.data.mr_fov)  # not where the MR acquired nothing
        mr = mr[keep]
        if self.latent.shift is None or self.latent.scale is None:  # measured once, then kept in config.json
            self.latent.shift = float(mr.mean())
            self.latent.scale = float(1.0 / max(mr.std(), 1e-6))
        cond = self._scaled(ct)
        if self.base.run:  # without base.train_runs, from a model that saw the slice (docs/models/diffma.md)
            base = self._base_latents(pairs, progress)
            cond = np.concatenate([cond, self._scaled(base)], 1)
        # scaled (MR, condition) latent pairs of every training slice
        return FlippedSlices({"x0": self._scaled(mr), "ct": cond[keep]}, self.data.flip, seed + rank)

    def _base_latents(self, pairs: list[PairSlices], progress: bool) -> np.ndarray:
        """Raw latents of the base's MR for all slices of `pairs`, cached (`_cached`)."""
        runs = self.base.train_runs or (self.base.run,)
        key = [[hashlib.sha1(resolve_checkpoint(r)[0].read_bytes()).hexdigest() for r in runs], self.base.flip_average,
               [(p.id, p.ct.shape, float(p.ct.sum())) for p in pairs]]

        def make() -> dict[str, np.ndarray]:
            if self.base.train_runs:  # out of fold: each patient's base from a run that did not see it
                slices = np.concatenate([self.base_slices(p.ct, run=self._fold_run(p.id)) for p in pairs])
            else:
                slices = self.base_slices(np.concatenate([p.ct for p in pairs]))
            return {"base": self.encode(slices, progress=progress, exact=True)}
        return self._cached("base", key, make)["base"]

    # ---- training
    def prepare_model(self, model, train_set, device, pretrain: bool, progress: bool = True) -> None:
        """Pre-train DiffMa's vision embedder alone with the cross InfoNCE loss, then freeze it."""
        embedder = getattr(model, "embedder", None)
        steps = self.diffusion.embedder_pretrain_steps
        if embedder is None or steps == 0:
            return
        if pretrain:
            from rtgen.models.diffma_embedder import cross_info_nce

            opt = torch.optim.AdamW(embedder.parameters(), lr=self.diffusion.embedder_lr, weight_decay=0.0)
            gen = torch.Generator().manual_seed(self.diffusion.seed)
            ct = torch.from_numpy(train_set.arrays["ct"])
            batch = min(64, len(ct))
            embedder.train()
            for _ in tqdm(range(steps), desc="embedder (InfoNCE)", unit="step", disable=not progress, leave=False):
                idx = torch.randperm(len(ct), generator=gen)[:batch]
                loss = cross_info_nce(embedder.embed_tokens(ct[idx].to(device)), self.diffusion.tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        embedder.freeze()

    def loss(self, model, batch: dict) -> torch.Tensor:
        d = self.diffusion
        ct = batch["ct"]
        offset = self._output_offset(ct)
        return diffusion_loss(lambda x_t, t: model(x_t, t, ct).float() + offset, batch["x0"], self.schedule,
                              d.prediction)

    def _output_offset(self, cond: torch.Tensor) -> torch.Tensor | float:
        """What the network's output is added to: the base's latent (the condition's second half), or 0."""
        return cond[:, cond.shape[1] // 2:].float() if self.base.run else 0.0

    # ---- checkpoints
    def write_run_files(self, run_dir: Path) -> None:
        """A trained autoencoder (`autoencoder/`) and a base (`base/`) are copied into the run folder:
        predicting needs nothing else."""
        if self.latent.autoencoder == "autoencoder_kl":
            _autoencoder_run(self.latent.autoencoder_run, self.source)  # checks it is an autoencoder run
            copy_run(self.latent.autoencoder_run, Path(run_dir) / AUTOENCODER_DIR)
        if self.base.run:
            self.base_model()  # checks it is an image_regression run
            copy_run(self.base.run, Path(run_dir) / BASE_DIR)

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> ImageSynthesisTask:
        latent = dict(config.get("latent") or {})
        beside = run_part(Path(source).parent, AUTOENCODER_DIR)
        if latent.get("autoencoder") == "autoencoder_kl" and (beside / "config.json").is_file():
            latent["autoencoder_run"] = str(beside)  # the copy made at training time, wherever the run folder moved
        base = dict(config.get("base") or {})
        if base.get("run"):  # likewise; a missing copy is a clear error on use
            base["run"] = str(run_part(Path(source).parent, BASE_DIR))
        return super().from_checkpoint({**config, "latent": latent, "base": base}, source)

    # ---- prediction
    def val_data(self, progress: bool = True) -> list[PairSlices]:
        """The validation patients with their CT encoded once (not again every epoch)."""
        data = super().val_data(progress)
        for ps in data:
            ps.ct_latent, ps.base = self.condition(ps.ct)
        return data

    def predict_case(self, model, ps: PairSlices, device, batch_size: int, autocast=None) -> np.ndarray:
        return self.sample_mr(model, ps.ct_latent, device, batch_size, None, autocast, ps.base)

    def predict_slices(self, model, ct: np.ndarray, device, batch_size: int, sampling=None,
                       autocast=None) -> np.ndarray:
        """CT slices in [0, 1] -> sampled MR slices in [0, 1] (deterministic for a seed)."""
        cond, base = self.condition(ct, batch_size)
        return self.sample_mr(model, cond, device, batch_size, sampling, autocast, base)

    @torch.no_grad()
    def sample_mr(self, model, ct_latent: np.ndarray, device, batch_size: int, sampling=None,
                  autocast=None, base: np.ndarray | None = None) -> np.ndarray:
        """Scaled condition latents (and the base's MR slices, with a base) -> sampled MR slices in [0, 1].
        `sampling.samples` K > 1 averages K sampled latents before decoding (one decode, K times the
        network): an estimate of the conditional mean, which SSIM and PSNR reward over any one sample."""
        sampler = (sampling.sampler if sampling is not None else None) or self.diffusion.val_sampler
        strength = self.diffusion.start_strength
        if strength < 1 and sampler != "ddim":
            raise RtgenError(f"this model starts sampling from its base (diffusion.start_strength {strength}), which "
                             f"only the ddim sampler can do: use --sampler ddim, not {sampler}")
        steps = sampling.steps if sampling is not None else self.diffusion.val_steps
        seed = sampling.seed if sampling is not None else self.diffusion.seed
        samples = max(1, sampling.samples if sampling is not None else 1)
        cond_all = torch.from_numpy(ct_latent)
        gen = torch.Generator().manual_seed(seed)
        was = model.training
        model.eval()
        out = []
        with autocast or contextlib.nullcontext():
            for i in range(0, len(cond_all), batch_size):
                cond = cond_all[i:i + batch_size].to(device)
                embedded = model.embedder(cond) if hasattr(model, "denoise") else None

                offset = self._output_offset(cond)

                def denoise(x_t, t, cond=cond, embedded=embedded, offset=offset):
                    t = t.to(device)
                    out = model.denoise(x_t, t, embedded) if embedded is not None else model(x_t, t, cond)
                    return out.float() + offset

                shape = (cond.shape[0], self.target_channels(cond), *cond.shape[2:])
                z = sum(sample(denoise, shape, self.schedule, sampler, steps, self.diffusion.prediction,
                               generator=gen, device=device, start=offset if strength < 1 else None, strength=strength)
                        for _ in range(samples)) / samples  # K > 1: their mean latent, decoded once
                mr = self.decode(self._raw(z))
                if base is not None and self.base.decode_as_change:
                    mr = np.clip(base[i:i + batch_size] + mr - self.decode(self._raw(offset)), 0.0, 1.0)
                out.append(mr)
        model.train(was)
        return np.concatenate(out)

    def target_channels(self, cond: torch.Tensor) -> int:
        """The MR latent's channels: the condition's, or half of them with a base."""
        return cond.shape[1] // 2 if self.base.run else cond.shape[1]

    def _raw(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() / self.latent.scale + self.latent.shift

    def model_card_data(self) -> list[str]:
        d = self.diffusion
        base = ([f"- Base (not in the paper): the image regression copied in `{BASE_DIR}/` runs on the CT first"
                 f"{' (the mean over the slice and its 3 in-plane flips)' if self.base.flip_average else ''}; the "
                 "diffusion refines its MR (its latent joins the condition, and the x0 prediction is its latent plus "
                 "the network's output)."] if self.base.run else [])
        if d.start_strength < 1:
            base.append(f"- Sampling starts from the base's latent noised to t = {d.start_strength * d.timesteps:.0f} "
                        "(SDEdit), not from pure noise.")
        return super().model_card_data() + base + [
            f"- Latents: {self.latent.autoencoder} (frozen), scaled by ({self.latent.shift:.4f}, {self.latent.scale:.4f}) "
            "(shift, scale) measured on the training MR latents.",
            f"- Diffusion: {d.schedule} schedule, {d.timesteps} steps, {d.prediction} prediction; validation samples with "
            f"{d.val_sampler} in {d.val_steps} steps. Vision embedder pre-trained {d.embedder_pretrain_steps} steps "
            f"(cross InfoNCE, tau {d.tau}), then frozen. The global condition is a pooled CT embedding of the "
            "embedder (the paper's BioMedCLIP weights cannot be downloaded here).",
        ]
