"""DiffKT3D (issue #14): Any2Any latent flow matching over planning modalities, then dose, then ScardNFT.

One task, three stages chosen by `any2any.stage`, each one `rtgen train` run:

- `any2any` (stage A): every step draws a target slot uniformly from `any2any.targets` and a set of
  conditions from the other slots; the number of conditions follows a curriculum, all of them at
  first, down to `min_conditions` after `curriculum_steps` optimiser steps (the paper's "simple
  curriculum on the number of observed modalities");
- `dose` (stage B): the target is always the dose, every other slot a condition; `train.init`
  names the stage-A run whose weights it starts from;
- `scardnft` (stage C): the network gets LoRA adapters on its attention and FFN layers (base
  frozen but the modulation networks, paper B.5); each step samples `nft.candidates` doses per
  patient with the stage's frozen starting policy, scores them with the clinical scorecard
  (`rtgen.dosimetry.scorecard`, MAE anchor against the plan), turns rewards into eq. (10)
  optimality probabilities within each patient and minimises L = L_flow + lambda L_nft (eq. 13),
  both terms in the network's own units (x0 for `flow.prediction: sample`, as stage B trained).
  The stage keeps its best epoch by the validation scorecard, the quantity it is there to raise.

Slots are `rtgen.data.transforms.modalities`: CT, PTV prescription map, OAR label map, body
(possible dose mask), an optional dose prior, and the dose. Every slot is encoded once by the frozen
volume autoencoder of `latent.vae_run` (the posterior mean, cached in `data.cache`), each latent
channel standardised by its training mean and spread per modality (`latent_stats` in config.json).

Why a `prior` slot: the paper transfers knowledge from Wan 2.1, pretrained on videos, which cannot
be downloaded here; rtgen transfers it from its CPU dose model instead. The slot holds the
`lightgbm_dose` prediction (out-of-fold predictions of its fold boosters for the training
patients, `data.prior_train`, so the slot is as wrong in training as on new patients; at prediction
the shipped model of `prior.model` is run). A model configured without "prior" in its modalities is
the plain paper setting (the ablation).

Prediction: the target's latent is integrated from noise by the flow ODE (`sampling.method`, Euler
or Heun, `sampling.steps`), `best_of` candidates from different noises are decoded and the one with
the best scorecard reward is kept (no reference needed: the reward's MAE anchor is off at
prediction). A dose is clamped at 0 Gy and zeroed outside the possible dose mask; another target
(`impute`) is decoded to its physical meaning (HU, prescription Gy, OAR label, mask).
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_path
from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.registry import register_task
from rtgen.core.structures import pack_structures, unpack_structures
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.sources.openkbp import read_dose_csv
from rtgen.data.transforms.dose_edits import structure_scale_field
from rtgen.data.transforms.modalities import Crop, decode_modality, dose_to_unit, patient_modalities, unit_to_dose
from rtgen.diffusion.flow import FLOW_SAMPLERS, FlowSchedule, as_velocity, flow_loss, sample_flow
from rtgen.diffusion.nft import optimality_from_rewards, scardnft_objective
from rtgen.dosimetry import OpenKBPScores
from rtgen.dosimetry.gdp_hmm import gdp_hmm_mae
from rtgen.dosimetry.scorecard import Scorecard, reward
from rtgen.tasks.base import Task, copy_run, load_run

VAE_DIR = "vae"  # the run folder keeps its frozen autoencoder here (weights + config.json)
LORA_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.0", "ffn.2")  # ScardNFT adapters (paper B.5)
NFT_TRAINABLE = ("modulation", "time_projection")  # besides LoRA: the modulation networks


# ---------------------------------------------------------------- configuration
@dataclass
class KT3DDataConfig:
    train: str = ""  # split folder of OpenKBP patients (CSV folders, .npz caches or NIfTI folders)
    val: str = ""
    prior_train: str = ""  # pt_N.csv dose priors of the training patients (out-of-fold predictions)
    prior_val: str = ""  # the same for validation; empty: computed with prior.model
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    cache: str = "rtgen-out/cache/diffkt3d"  # latent cache (a sub-folder per autoencoder)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LatentConfig:
    vae_run: str = ""  # run folder of a `volume_autoencoder` training (frozen here)
    # where the model has a `prior` slot, the dose is generated as a change to the prior: a generated
    # dose is read as prior + D(z) - D(z_prior), not D(z), so the decoder's blur, the same on two
    # doses, cancels (`dose_volumes`); and with flow.prediction "sample" the network's x0 is the
    # prior's latent plus its output, so an untrained network gives back the prior (`predictor`)
    dose_from_prior: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Any2AnyConfig:
    stage: Literal["any2any", "dose", "scardnft"] = "any2any"
    targets: tuple[str, ...] = ("ct", "ptv", "oar", "body", "dose")  # slots stage A may generate
    min_conditions: Annotated[int, Field(ge=1)] = 1
    curriculum_steps: Annotated[int, Field(ge=0)] = 1000  # steps until min_conditions is reachable

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


@dataclass
class FlowConfig:
    shift: Annotated[float, Field(gt=0)] = 3.0  # Wan/SD3 flow shift of training and sampling times
    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    prediction: Literal["velocity", "sample"] = "velocity"  # the paper's v, or x0 (see LatentConfig)

    def schedule(self) -> FlowSchedule:
        return FlowSchedule(shift=self.shift, t_sampling=self.t_sampling)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KT3DSamplingConfig:
    method: str = "euler"  # euler, heun or dpmpp
    steps: Annotated[int, Field(ge=1, le=1000)] = 8
    best_of: Annotated[int, Field(ge=1, le=64)] = 2  # candidates per patient, the best scorecard kept
    seed: int = 0

    def __post_init__(self):
        if self.method not in FLOW_SAMPLERS:
            raise ValueError(f"method must be one of {FLOW_SAMPLERS}, got {self.method!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PriorConfig:
    model: str = "hub:lightgbm_dose_openkbp"  # run folder (or hub:<name>) whose prediction fills `prior`

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NFTConfig:
    candidates: Annotated[int, Field(ge=2, le=64)] = 4  # samples per patient per step
    steps: Annotated[int, Field(ge=1, le=100)] = 8  # ODE steps of the candidates
    beta: Annotated[float, Field(gt=0, le=1)] = 0.1  # implicit-policy mixing (eq. 11)
    lam: Annotated[float, Field(ge=0)] = 1.0  # weight of L_nft against L_flow (eq. 13)
    lora_rank: Annotated[int, Field(ge=1, le=512)] = 16
    mae_weight: Annotated[float, Field(ge=0)] = 1.0  # reward anchor: GDP-HMM MAE / prescription
    hard_penalty: Annotated[float, Field(ge=0)] = 1.0  # reward anchor: hinge on hard constraints
    # Exploration (not in the paper): std of Gaussian noise added to each candidate's latent (standardised
    # units) before it is decoded and scored. A policy whose candidates barely differ gives eq. 10 nothing
    # to rank; the noise makes them differ, and the NFT loss then pulls towards the better-scored ones.
    explore: Annotated[float, Field(ge=0)] = 0.0
    # Clinical exploration (not in the paper): each candidate's dose has every structure (and the rest of
    # the body) scaled by its own factor 1 + N(0, explore_structures) before it is scored; the edit goes
    # back into the candidate's latent (`rtgen.data.transforms.dose_edits`). It varies what the
    # scorecard measures, so that eq. 10 has something to rank; 0 turns it off.
    explore_structures: Annotated[float, Field(ge=0, le=0.3)] = 0.0
    explore_targets: bool = True  # false: the targets keep their dose, only the organs at risk and the rest vary
    # Rollout reuse (not in the paper): the starting policy is frozen, so a patient's scored candidates
    # stay samples of it. With reuse on, they are drawn and scored once, stored beside the latent cache,
    # and re-noised (fresh t and eps) in every later epoch or run with the same starting policy and
    # candidate settings: those skip sampling, decoding and scoring, the cost of a stage C step on a
    # CPU. Off: every epoch draws new candidates.
    reuse_rollouts: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _save_arrays(path: Path, arrays: dict) -> None:
    """One .npz of the task's caches (latents, rollouts), written atomically: an interrupted run
    leaves no half-written file for the next one to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------- the task
@register_task("diffkt3d")
class DiffKT3DTask(Task):
    """Any-to-any flow matching over latent planning modalities with a 3D DiT (see module docstring)."""

    sections: ClassVar[dict[str, type]] = {"data": KT3DDataConfig, "latent": LatentConfig, "any2any": Any2AnyConfig,
                                           "flow": FlowConfig, "sampling": KT3DSamplingConfig, "prior": PriorConfig,
                                           "nft": NFTConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("latent", "any2any", "flow", "sampling", "prior", "nft")
    selection_metric = "dose_score"
    metric_units = "Gy"
    item_name = "patients"
    stochastic: ClassVar[bool] = True
    samplers: ClassVar[tuple[str, ...]] = FLOW_SAMPLERS  # `rtgen predict --sampler` (default: the run's own)

    def __init__(self, model_name: str, arch: dict, settings: dict[str, Any], source: str = "config"):
        super().__init__(model_name, arch, settings, source)
        self.modalities = tuple(self.architecture.modalities)
        bad = [m for m in self.any2any.targets if m not in self.modalities]
        if bad:
            raise ConfigError(source, f"any2any.targets {bad} are not modalities of the model {list(self.modalities)}")
        self.latent_stats: dict[str, list[list[float]]] | None = None  # modality -> [means, stds] per channel
        self._vae = None
        self._prior_model = None
        self._steps = 0
        self._old_model = None
        self._generator = torch.Generator().manual_seed(0)
        self._rewards: list[list[float]] = []  # stage C: this epoch's candidate rewards, one list per patient
        self._rollouts: dict[int, tuple[torch.Tensor, list[float]]] = {}  # nft.reuse_rollouts: patient -> (z, R)
        if self.any2any.stage == "scardnft":  # stage C is there to raise the scorecard: keep its best epoch
            self.selection_metric, self.higher_is_better = "scorecard", True

    @property
    def init_on_resume(self) -> bool:
        """Stage C's frozen starting policy (`_old_model`) is train.init's network, also on --resume."""
        return self.any2any.stage == "scardnft"

    def start_epoch(self, seed: int, epoch: int, step: int, rank: int) -> None:
        self._generator.manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
        self._steps = step

    def start_from(self, init_config: dict) -> None:
        """A stage starting from another run's weights keeps that run's latent standardisation: the
        network learned in those units, and statistics of another set of patients (stage C's subset)
        would shift every input it sees."""
        if init_config.get("latent_stats"):
            self.latent_stats = init_config["latent_stats"]

    def metric_unit(self, name: str) -> str:
        name = name.removeprefix("val_")
        return "" if name in ("scorecard", "reward") else "s" if name.startswith("seconds") else "Gy"

    # ---- the frozen autoencoder
    def implied_architecture(self) -> dict:
        """Latent channels from the autoencoder run (when it is here: a checkpoint loaded elsewhere
        records them in its architecture and brings its own copy of the autoencoder)."""
        source = self._vae_source()
        if source is None or not source.exists():
            return {}
        return {"latent_channels": self.vae_config()["model"]["architecture"]["latent_channels"]}

    def _vae_source(self) -> Path | None:
        run = getattr(self, "_vae_run_dir", None) or self.latent.vae_run
        return Path(run) if run else None

    def vae_config(self) -> dict:
        """The autoencoder run's config.json (read once per source, not once per patient)."""
        path = self._vae_source()
        if getattr(self, "_vae_config", (None,))[0] == path:
            return self._vae_config[1]
        if path is None:
            raise ConfigError(self.source, "latent.vae_run is not set (a volume_autoencoder run folder)")
        config_path = resolve_checkpoint(path)[1]
        config = read_config(config_path)
        if config.get("task") != "volume_autoencoder":
            raise ConfigError(self.source, f"latent.vae_run {path} is a {config.get('task')} run, not a "
                                           "volume_autoencoder one (configs/diffkt3d_vae.yaml trains it)")
        self._vae_config = (path, config)
        return config

    @property
    def vae(self):
        if self._vae is None:
            _, model, _ = load_run(self._vae_source(), "latent.vae_run", self.source)
            self._vae = model.eval().requires_grad_(False)
        return self._vae

    def vae_key(self) -> str:
        """The latent cache's sub-folder: a hash of the autoencoder's weights (hashed once per source)."""
        path = self._vae_source()
        if getattr(self, "_vae_key", (None,))[0] != path:
            weights, _ = resolve_checkpoint(path)
            self._vae_key = (path, hashlib.sha256(weights.read_bytes()).hexdigest()[:12])
        return self._vae_key[1]

    @property
    def depth(self) -> int:
        return int(self.vae_config().get("data", {}).get("depth", 96))

    # ---- latents
    @torch.no_grad()
    def encode(self, volumes: dict[str, np.ndarray], names, device="cpu") -> dict[str, np.ndarray]:
        """Scaled cropped volumes -> raw latents (posterior means), float32."""
        vae = self.vae.to(device)
        out = {}
        for name in names:
            x = torch.from_numpy(volumes[name].astype(np.float32))[None, None].to(device)
            out[name] = vae.encode_mean(x)[0].float().cpu().numpy()
        return out

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, name: str) -> np.ndarray:
        """(n, C, d, h, w) standardised latents of slot `name` -> (n, D, H, W) volumes in [-1, 1]."""
        z = self.unstandardise(latent, name)
        vae = self.vae.to(z.device)
        return np.stack([vae.decode(z[i:i + 1])[0, 0].float().clamp(-1, 1).cpu().numpy() for i in range(len(z))])

    def _stats(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.latent_stats is None:
            raise RtgenError("latent statistics are not set: train first, or load a trained run")
        mean, std = (torch.tensor(v, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)
                     for v in self.latent_stats[name])
        return mean, std

    def standardise(self, z: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self._stats(name, z)
        return (z - mean) / std

    def unstandardise(self, z: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self._stats(name, z)
        return z * std + mean

    def read_prior(self, folder: str, patient_id: str) -> np.ndarray | None:
        if not folder:
            return None
        path = Path(folder) / f"{patient_id}.csv"
        if not path.exists():
            raise RtgenError(f"{path}: no dose prior for {patient_id} in {folder}")
        return read_dose_csv(path)

    def prior_dose(self, patient: Patient) -> np.ndarray:
        """The dose prior of a new patient: the prediction of `prior.model`."""
        if self._prior_model is None:
            self._prior_model = load_run(self.prior.model, "prior.model", self.source)[:2]
        task, model = self._prior_model
        return task.predict_patient(model, patient)[0]

    def cached_case(self, path: Path, prior_folder: str, device="cpu") -> dict:
        """A patient's raw latents, crop, structures and cropped dose, from the cache or computed."""
        root = Path(self.data.cache) / self.vae_key()
        cache = root / f"{Path(path).name.split('.')[0]}.npz"
        prior_source = str(Path(prior_folder).resolve()) if prior_folder else self.prior.model
        if cache.exists():
            with np.load(cache) as z:
                case = {k: z[k] for k in z.files}
            if "prior" not in self.modalities or (str(case.get("prior_source", "")) == prior_source
                                                  and "prior" in case):
                return case
        patient = load_patient(path)
        prior = self.read_prior(prior_folder, patient.id) if "prior" in self.modalities else None
        if "prior" in self.modalities and prior is None:
            prior = self.prior_dose(patient)
        vols, crop = patient_modalities(patient, prior, depth=self.depth)
        latents = self.encode(vols, [m for m in self.modalities if m in vols], device)
        case = {**{f"z_{k}": v.astype(np.float16) for k, v in latents.items()},
                "crop": np.array([crop.start, crop.depth]), "id": np.array(patient.id),
                "spacing": np.array(patient.spacing), "grid": np.array(patient.grid),
                "bits": crop.take(pack_structures(patient.structures, patient.grid)), "mask": crop.take(patient.possible_dose_mask),
                "prior_source": np.array(prior_source)}
        if prior is not None:
            case["prior"] = vols["prior"].astype(np.float16)
        if patient.dose is not None:
            case["dose"] = crop.take(patient.dose).astype(np.float16)
        _save_arrays(cache, case)
        return case

    def _cases(self, folder: str, limit, what: str, prior_folder: str, progress: bool) -> list[dict]:
        paths = self.split_paths(folder, limit, what)
        return [self.cached_case(p, prior_folder) for p in tqdm(paths, desc=f"{what} latents", disable=not progress,
                                                               leave=False)]

    def case_latents(self, case: dict, names) -> torch.Tensor:
        """(S, C, d, h, w) standardised latents of the named slots."""
        return torch.stack([self.standardise(torch.from_numpy(case[f"z_{n}"].astype(np.float32)), n) for n in names])

    # ---- data
    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True):
        cases = self._cases(self.data.train, self.data.max_train_patients, "train", self.data.prior_train, progress)
        missing = [(str(c["id"]), m) for c in cases for m in self.modalities if f"z_{m}" not in c]
        if missing:
            raise RtgenError(f"training patients lack slots the model needs: {missing[:5]}")
        if self.latent_stats is None:  # per modality and channel, over every training latent voxel
            self.latent_stats = {}
            for m in self.modalities:
                z = np.stack([c[f"z_{m}"].astype(np.float32) for c in cases])
                axes = (0, 2, 3, 4)
                self.latent_stats[m] = [z.mean(axes).tolist(), np.maximum(z.std(axes), 1e-3).tolist()]
        self._train_cases = cases  # stage C scores its candidates against these patients' plans and structures
        return LatentCases(cases, self)

    def val_data(self, progress: bool = True) -> list[dict]:
        return self._cases(self.data.val, self.data.max_val_patients, "val", self.data.prior_val, progress)

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_patients": len(train_set), "val_patients": len(val_data)}

    def collate(self, items: list[dict]) -> dict:
        return {"latents": torch.stack([it["latents"] for it in items]), "index": torch.tensor([it["index"] for it in items])}

    # ---- model
    def prepare_model(self, model, train_set, device, pretrain: bool, progress: bool = True) -> None:
        if self.any2any.stage == "scardnft":
            from rtgen.layers.lora import add_lora, freeze_base

            self._old_model = copy.deepcopy(model).eval().requires_grad_(False)
            add_lora(model, rank=self.nft.lora_rank, target_modules=LORA_TARGETS)
            freeze_base(model, trainable=NFT_TRAINABLE)

    # ---- training
    def _draw_slots(self, n_slots: int) -> tuple[list[int], int]:
        """(slot indices in model order, index of the target among them) for one step."""
        g = self._generator
        if self.any2any.stage == "any2any":
            choices = [self.modalities.index(m) for m in self.any2any.targets]
            target = choices[int(torch.randint(len(choices), (1,), generator=g))]
            others = [i for i in range(n_slots) if i != target]
            frac = min(1.0, self._steps / self.any2any.curriculum_steps) if self.any2any.curriculum_steps else 1.0
            k_min = max(1, round(len(others) - frac * (len(others) - min(self.any2any.min_conditions, len(others)))))
            k = int(torch.randint(k_min, len(others) + 1, (1,), generator=g))
            conds = sorted(others[int(j)] for j in torch.randperm(len(others), generator=g)[:k])
        else:
            target = self.modalities.index("dose")
            conds = [i for i in range(n_slots) if i != target]
        slots = sorted(conds + [target])
        return slots, slots.index(target)

    def predictor(self, model, conds: torch.Tensor, cond_ids: list[int], target_id: int):
        """fn(x_t, t) -> the network's prediction (flow.prediction) for the target slot given fixed
        condition latents (n, S-1, C, ...). Predicting x0 of the dose with the prior among the
        conditions, the prediction is the prior's latent (as a dose latent) plus the network's output."""
        ids = sorted(cond_ids + [target_id])
        pos = ids.index(target_id)
        ids_t = torch.tensor(ids)
        prior_id, base = (self.modalities.index("prior") if "prior" in self.modalities else None), None
        if (self.flow.prediction == "sample" and self.latent.dose_from_prior and prior_id in cond_ids
                and self.modalities[target_id] == "dose"):  # the conditions are fixed: re-standardise once
            base = self.standardise(self.unstandardise(conds[:, cond_ids.index(prior_id)].float(), "prior"), "dose")

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = x_t.shape[0]
            c = conds.expand(n, *conds.shape[1:]) if conds.shape[0] == 1 else conds
            inp = torch.cat([c[:, :pos], x_t[:, None], c[:, pos:]], 1)
            roles = torch.zeros(n, len(ids), dtype=torch.bool, device=x_t.device)
            roles[:, pos] = True
            out = model(inp, ids_t.to(x_t.device), roles, t)[:, pos]
            return out if base is None else out + base.to(out.dtype)
        return fn

    def velocity(self, model, conds: torch.Tensor, cond_ids: list[int], target_id: int):
        """velocity_fn(x_t, t) of the target slot given fixed condition latents (n, S-1, C, ...)."""
        return as_velocity(self.predictor(model, conds, cond_ids, target_id), self.flow.prediction)

    def loss(self, model, batch: dict) -> torch.Tensor:
        if self.any2any.stage == "scardnft":
            return self.nft_loss(model, batch)
        x = batch["latents"]  # (B, S, C, d, h, w) in model modality order
        slots, pos = self._draw_slots(x.shape[1])
        self._steps += 1
        target = slots[pos]
        conds = [s for s in slots if s != target]
        return flow_loss(self.predictor(model, x[:, conds], conds, target), x[:, target], self.flow.schedule(),
                         generator=self._generator, prediction=self.flow.prediction)

    def nft_loss(self, model, batch: dict) -> torch.Tensor:
        """One ScardNFT step (eq. 11-13) on the batch's patients: candidates from the frozen starting
        policy, scorecard rewards, optimality per patient, then L_flow on the plans + lam L_nft."""
        cases = [self._train_cases[int(i)] for i in batch["index"]]
        dose_id = self.modalities.index("dose")
        cond_ids = [i for i in range(len(self.modalities)) if i != dose_id]
        schedule, n = self.flow.schedule(), self.nft.candidates
        samples, rewards, groups, conds_all = [], [], [], []
        for j, (index, case) in enumerate(zip(batch["index"].tolist(), cases)):
            conds = self.case_latents(case, [self.modalities[i] for i in cond_ids])[None]
            z, case_rewards = self.scored_candidates(index, case, conds, cond_ids, dose_id)
            self._rewards.append(case_rewards)
            rewards += case_rewards
            samples.append(z)
            groups += [j] * n
            conds_all.append(conds.expand(n, *conds.shape[1:]))
        r = optimality_from_rewards(torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups))
        conds = torch.cat(conds_all)
        x = batch["latents"]  # the plans: L_flow keeps the policy anchored to the data (eq. 13)
        # both losses in the network's own units (x0 for flow.prediction "sample"), as stages A and B trained
        total, _ = scardnft_objective(
            self.predictor(model, conds, cond_ids, dose_id), self.predictor(self._old_model, conds, cond_ids, dose_id),
            torch.cat(samples), r, schedule, self.nft.beta, self.nft.lam, reference=x[:, dose_id],
            reference_velocity_fn=self.predictor(model, x[:, cond_ids], cond_ids, dose_id), generator=self._generator,
            prediction=self.flow.prediction)
        return total

    def scored_candidates(self, index: int, case: dict, conds: torch.Tensor, cond_ids: list[int], dose_id: int
                          ) -> tuple[torch.Tensor, list[float]]:
        """A patient's candidates and rewards: drawn now, or with nft.reuse_rollouts the ones drawn in an
        earlier epoch (kept in memory, and on disk beside the latent cache so that another run from the
        same starting policy and settings reuses them too)."""
        if not self.nft.reuse_rollouts:
            return self.rollout(case, conds, cond_ids, dose_id)
        if index not in self._rollouts:
            path = Path(self.data.cache) / "rollouts" / self.rollout_key() / f"{case['id']}.npz"
            source = str(case.get("prior_source", ""))  # the conditions hold the prior's latent
            stored = None
            if path.exists():
                with np.load(path) as f:
                    if str(f["prior_source"]) == source:
                        stored = (torch.from_numpy(f["z"]), [float(v) for v in f["rewards"]])
            if stored:
                self._rollouts[index] = stored
            else:
                z, rewards = self.rollout(case, conds, cond_ids, dose_id)
                self._rollouts[index] = (z.cpu(), rewards)
                _save_arrays(path, {"z": z.float().cpu().numpy(), "rewards": np.array(rewards),
                                    "prior_source": np.array(source)})
        z, rewards = self._rollouts[index]
        return z.to(conds), rewards

    def rollout_key(self) -> str:
        """What a stored rollout depends on: the starting policy's weights, the latent cache (autoencoder)
        and standardisation, and the settings that draw, edit and score the candidates."""
        if not hasattr(self, "_rollout_key"):
            h = hashlib.sha256(self.vae_key().encode())
            for name, tensor in sorted(self._old_model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
            settings = {k: v for k, v in self.nft.to_dict().items() if k not in ("beta", "lam", "lora_rank")}
            h.update(repr((sorted(settings.items()), self.flow.to_dict(), self.latent.to_dict(),
                           self.latent_stats)).encode())
            self._rollout_key = h.hexdigest()[:12]
        return self._rollout_key

    @torch.no_grad()
    def rollout(self, case: dict, conds: torch.Tensor, cond_ids: list[int], dose_id: int
                ) -> tuple[torch.Tensor, list[float]]:
        """nft.candidates dose latents of one patient from the frozen starting policy (with the configured
        exploration) and their scorecard rewards, anchored to the plan."""
        n = self.nft.candidates
        fn = self.velocity(self._old_model, conds, cond_ids, dose_id)
        z = sample_flow(fn, (n, *conds.shape[2:]), self.flow.schedule(), self.nft.steps, "euler",
                        generator=self._generator)
        if self.nft.explore:
            z = z + self.nft.explore * torch.randn(z.shape, generator=self._generator).to(z)
        if self.nft.explore_structures:
            z = self.edit_by_structure(case, z)
        ref = case["dose"].astype(np.float32)
        return z, [self.case_reward(case, decode_modality("dose", d), ref) for d in self.dose_volumes(case, z)]

    @torch.no_grad()
    def edit_by_structure(self, case: dict, z: torch.Tensor) -> torch.Tensor:
        """Candidate dose latents (n, C, d, h, w) with each candidate's dose scaled structure by structure
        (`nft.explore_structures`): z + E(edited dose) - E(dose), in standardised units. The candidate
        is then whatever that latent decodes to, and its reward is scored on that decode."""
        doses = self.dose_volumes(case, z)
        structures = unpack_structures(case["bits"])
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=self._generator)))
        _, std = self._stats("dose", z)
        out = []
        for zk, unit in zip(z, doses):
            field = structure_scale_field(structures, unit.shape, self.nft.explore_structures, rng,
                                          targets=self.nft.explore_targets)
            edited = dose_to_unit(unit_to_dose(unit) * field)
            enc = self.encode({"before": unit, "after": edited}, ["before", "after"], z.device)
            out.append(zk + torch.from_numpy(enc["after"] - enc["before"]).to(zk) / std)
        return torch.stack(out)

    def epoch_stats(self) -> dict:
        """Stage C's training reward over the epoch (this process's patients): the mean candidate
        reward, the mean of each patient's best, and the mean within-patient spread that eq. 10's
        optimality divides by (near 0: the candidates are indistinguishable and NFT has no signal)."""
        if not self._rewards:
            return {}
        groups, self._rewards = [np.asarray(r, np.float64) for r in self._rewards], []
        return {"train_reward": float(np.mean(np.concatenate(groups))),
                "train_reward_best": float(np.mean([g.max() for g in groups])),
                "train_reward_spread": float(np.mean([g.std() for g in groups]))}

    def case_reward(self, case: dict, dose_crop: np.ndarray, reference: np.ndarray | None) -> float:
        """The scorecard reward of a cropped dose (anchored to the plan when `reference` is given)."""
        mask = case["mask"].astype(bool)
        dose = np.clip(dose_crop, 0, None) * mask
        vv = float(np.prod(case["spacing"]))
        return float(reward(dose, unpack_structures(case["bits"]), vv, scorecard=self.scorecard,
                            reference=reference, body_mask=mask,
                            mae_weight=self.nft.mae_weight if reference is not None else 0.0,
                            hard_penalty=self.nft.hard_penalty))

    @property
    def scorecard(self) -> Scorecard:
        if not hasattr(self, "_scorecard"):
            self._scorecard = Scorecard.default_hn_sib()
        return self._scorecard

    # ---- prediction
    @torch.no_grad()
    def generate(self, model, case: dict, target: str = "dose", sampling: KT3DSamplingConfig | None = None,
                 device="cpu") -> tuple[np.ndarray, list[float]]:
        """(best cropped volume in [-1, 1], rewards of the candidates) for the `target` slot of a case."""
        sampling = sampling or self.sampling
        tid = self.modalities.index(target)
        cond_ids = [i for i, m in enumerate(self.modalities) if i != tid and f"z_{m}" in case]
        conds = self.case_latents(case, [self.modalities[i] for i in cond_ids])[None].to(device)
        was = model.training
        model.eval()
        fn = self.velocity(model, conds, cond_ids, tid)
        g = torch.Generator().manual_seed(sampling.seed)
        z = sample_flow(fn, (sampling.best_of, *conds.shape[2:]), self.flow.schedule(), sampling.steps,
                        sampling.method, generator=g, device=device)
        model.train(was)
        vols = self.dose_volumes(case, z) if target == "dose" else self.decode(z, target)
        if target != "dose" or len(vols) == 1:
            return vols[0], []
        rewards = [self.case_reward(case, decode_modality("dose", v), None) for v in vols]
        return vols[int(np.argmax(rewards))], rewards

    def dose_volumes(self, case: dict, z: torch.Tensor) -> np.ndarray:
        """Generated dose latents (n, C, d, h, w) -> cropped doses in [-1, 1].

        With a prior slot (and `latent.dose_from_prior`) a dose is prior + D(z) - D(z_prior): what the
        network changed, added to the prior at full resolution. The autoencoder blurs a dose's
        gradients the same way whichever dose it is, so the difference of two decodes cancels most of
        that loss: on the 33 validation patients the plan's round trip scores 1.78 Gy this way against
        5.08 Gy as D(E(dose)) (`benchmarks/diffkt3d_vae_floor.py --prior`; README, DiffKT3D)."""
        vols = self.decode(z, "dose")
        if not (self.latent.dose_from_prior and "prior" in case and "z_prior" in case):
            return vols
        base = self.decode(self.case_latents(case, ["prior"]).to(z.device), "prior")[0]
        return np.clip(case["prior"].astype(np.float32)[None] + vols - base, -1.0, 1.0)

    def case_dose(self, case: dict, vol: np.ndarray) -> np.ndarray:
        """A generated cropped dose in [-1, 1] -> Gy on the patient's grid, 0 outside the mask."""
        crop = Crop(int(case["crop"][0]), int(case["crop"][1]))
        full_mask = crop.put(case["mask"].astype(np.float32), tuple(case["grid"]))
        return crop.put(unit_to_dose(vol), tuple(case["grid"])) * full_mask

    def predict_case(self, patient: Patient, device="cpu", target: str = "dose") -> dict:
        """A new patient's condition latents for generating `target` (its dose too when it has one and
        the target is another slot). A non-dose target goes without the dose prior: stage A trains on
        subsets of conditions, and it spares running the dose model."""
        with_prior = target == "dose"
        prior = self.prior_dose(patient) if with_prior and "prior" in self.modalities else None
        vols, crop = patient_modalities(patient, prior, depth=self.depth)
        latents = self.encode(vols, [m for m in self.modalities if m in vols and m != target], device)
        return {**{f"z_{k}": v for k, v in latents.items()}, **({"prior": vols["prior"]} if prior is not None else {}),
                "crop": np.array([crop.start, crop.depth]),
                "grid": np.array(patient.grid), "spacing": np.array(patient.spacing),
                "bits": crop.take(pack_structures(patient.structures, patient.grid)), "mask": crop.take(patient.possible_dose_mask)}

    def predict_patient(self, model, patient: Patient, batch_size: int = 1, tta: bool = False, sampling=None,
                        device=None, autocast=None):
        """(dose in Gy, None): the best of `best_of` sampled doses by scorecard reward."""
        device = device or "cpu"
        case = self.predict_case(patient, device)
        vol, _ = self.generate(model, case, "dose", self.sampling_from(sampling), device)
        return self.case_dose(case, vol), None

    def check_target(self, target: str) -> None:
        allowed = [m for m in self.modalities if m != "prior"]
        if target not in allowed:
            raise RtgenError(f"--target {target}: this model generates one of {', '.join(allowed)}")

    def impute(self, model, patient: Patient, target: str, sampling=None, device="cpu") -> np.ndarray:
        """Generate one missing modality from the others, on the patient's grid in its physical units."""
        self.check_target(target)
        case = self.predict_case(patient, device, target)
        vol, _ = self.generate(model, case, target, self.sampling_from(sampling), device)
        crop = Crop(int(case["crop"][0]), int(case["crop"][1]))
        fill = {"ct": -1.0, "dose": -1.0}.get(target, -1.0)
        return decode_modality(target, crop.put(vol, tuple(case["grid"]), fill))

    def sampling_from(self, sampling) -> KT3DSamplingConfig:
        """The run's sampling settings, overridden by a CLI SamplingConfig's sampler/steps/seed/best_of if
        given (a sampler of None keeps the run's own ODE solver)."""
        if sampling is None:
            return self.sampling
        best_of = getattr(sampling, "best_of", None)
        return KT3DSamplingConfig(method=getattr(sampling, "sampler", None) or self.sampling.method, steps=getattr(sampling, "steps", self.sampling.steps),
                                  best_of=best_of if best_of is not None else self.sampling.best_of,
                                  seed=getattr(sampling, "seed", self.sampling.seed))

    # ---- validation
    def validate(self, model, data, device, batch_size: int, autocast=None) -> tuple[dict, Any]:
        """One sample per patient (no best-of: the selection metric follows the network alone)."""
        sampling = KT3DSamplingConfig(self.sampling.method, self.sampling.steps, 1, self.sampling.seed)
        return self.score_cases(model, data, sampling, device), None

    def score_cases(self, model, cases: list[dict], sampling: KT3DSamplingConfig, device="cpu",
                    per_patient: bool = False) -> dict:
        """OpenKBP dose and DVH scores, GDP-HMM MAE, mean scorecard fraction, mean reward (the weighted
        scorecard of eq. 9, without the anchors) and seconds a patient (sampling, decoding, best-of
        selection) of the doses generated for cached cases; `per_patient` adds each patient's dose
        error, scorecard and reward (for paired comparisons of two models)."""
        scores, gdp, cards, seconds = OpenKBPScores(), [], [], []
        for case in cases:
            start = time.perf_counter()
            vol, _ = self.generate(model, case, "dose", sampling, device)
            seconds.append(time.perf_counter() - start)
            gy = self.case_dose(case, vol)
            crop, grid = Crop(int(case["crop"][0]), int(case["crop"][1])), tuple(case["grid"])
            ref = crop.put(case["dose"].astype(np.float32), grid)
            mask = crop.put(case["mask"].astype(np.float32), grid) > 0
            structures = {k: crop.put(v.astype(np.float32), grid) > 0
                          for k, v in unpack_structures(case["bits"]).items()}
            vv = float(np.prod(case["spacing"]))
            scores.add(str(case["id"]), ref, gy, mask, structures, vv)
            gdp.append(gdp_hmm_mae(ref, gy, mask))
            card = self.scorecard.evaluate(gy, structures, vv)
            cards.append((card.fraction, card.weighted_score))
        fraction, weighted = np.mean(cards, axis=0)
        out = {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score, "gdp_hmm_mae": float(np.mean(gdp)),
               "scorecard": float(fraction), "reward": float(weighted), "seconds_per_patient": float(np.mean(seconds))}
        if per_patient:
            out["per_patient"] = {p.patient_id: {"dose_error": p.dose_error, "scorecard": c[0], "reward": c[1]}
                               for p, c in zip(scores.patients, cards)}
        return out

    # ---- checkpoints
    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), "latent_stats": self.latent_stats}

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> "DiffKT3DTask":
        task = super().from_checkpoint(config, source)
        task.latent_stats = config.get("latent_stats")
        return task

    def load_model(self, weights, merged: bool = True):
        """The trained DiT; the run's own copy of the autoencoder (`vae/`) is used from now on,
        wherever the run was trained. A stage-C run's LoRA adapters are folded into the base weights
        unless `merged=False` (unmerged, peft's wrappers ran prediction about 2x slower)."""
        if (Path(weights).parent / VAE_DIR).is_dir():
            self._vae_run_dir = Path(weights).parent / VAE_DIR
            self._vae = None
        if self.any2any.stage != "scardnft":
            return super().load_model(weights)
        from rtgen.core.checkpoint import check_and_load, load_weights
        from rtgen.layers.lora import add_lora, merge_lora

        model = add_lora(self.build_model(), rank=self.nft.lora_rank, target_modules=LORA_TARGETS)
        check_and_load(model, load_weights(weights), weights)
        return merge_lora(model) if merged else model  # merged: the base network's speed at prediction

    def write_run_files(self, run_dir) -> None:
        copy_run(self._vae_source(), Path(run_dir) / VAE_DIR)

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        nan = float("nan")
        return "\n".join([
            f"# {summary['model']['name']}: DiffKT3D stage {self.any2any.stage} ({self.name})", "",
            f"- Slots: {', '.join(self.modalities)}; latents of the frozen volume autoencoder copied in `{VAE_DIR}/`.",
            f"- Flow matching (x_t = (1 - t) x0 + t eps, shift {self.flow.shift}), the network predicting "
            f"{'x0' if self.flow.prediction == 'sample' else 'v = eps - x0'}; sampling {self.sampling.method}, "
            f"{self.sampling.steps} steps, best of {self.sampling.best_of} by scorecard.",
            *([f"- The dose is generated as a change to the prior ({self.prior.model}): prior + D(z) - D(z_prior)"
               + (", with x0 = the prior's latent + the network's output" if self.flow.prediction == "sample" else "")
               + "."] if self.latent.dose_from_prior and "prior" in self.modalities else []),
            f"- Trained on {t.get('train_patients', '?')} patients, {t['epochs_run']} epochs, "
            f"{t['seconds'] / 60:.1f} min on {t['hardware']}.",
            f"- Validation ({t.get('val_patients', '?')} patients, 1 sample): dose score "
            f"{v.get('dose_score', nan):.3f} Gy, DVH score {v.get('dvh_score', nan):.3f} Gy, GDP-HMM MAE "
            f"{v.get('gdp_hmm_mae', nan):.3f} Gy, scorecard {v.get('scorecard', nan):.3f}.", "",
        ])


class LatentCases(torch.utils.data.Dataset):
    """Every training patient's standardised slot latents, in the model's modality order."""

    def __init__(self, cases: list[dict], task: DiffKT3DTask):
        self.cases = cases
        self.latents = [task.case_latents(c, task.modalities) for c in cases]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "index": i}

