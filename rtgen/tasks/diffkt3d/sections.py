"""The sections of a DiffKT3D run config (`data`, `latent`, `any2any`, `flow`, `sampling`, `prior`, `nft`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from pydantic import Field

from rtgen.diffusion.flow import FLOW_SAMPLERS, FlowSchedule

AUTOENCODER_DIR = "autoencoder"  # the run folder keeps its frozen autoencoder here (weights + config.json)


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
    autoencoder_run: str = ""  # run folder of a `volume_autoencoder` training (frozen here)
    # where the model has a `prior` slot, the dose is generated as a change to the prior: a generated
    # dose is read as prior + D(z) - D(z_prior), not D(z), so the decoder's blur, the same on two
    # doses, cancels (`dose_volumes`); and with flow.prediction "sample" the network's x0 is the
    # prior's latent plus its output, so an untrained network gives back the prior (`predictor`)
    dose_from_prior: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Any2AnyConfig:
    stage: Literal["any2any", "dose", "nft"] = "any2any"  # one `rtgen train` run each, in this order
    targets: tuple[str, ...] = ("ct", "ptv", "oar", "body", "dose")  # slots the any2any stage may generate
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
    # candidate settings: those skip sampling, decoding and scoring, the cost of an nft step on a
    # CPU. Off: every epoch draws new candidates.
    reuse_rollouts: bool = False

    def to_dict(self) -> dict:
        return asdict(self)
