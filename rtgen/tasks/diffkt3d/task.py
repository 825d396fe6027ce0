"""The DiffKT3D task: its sections, training stages, checkpoints and run folder.

The class is assembled from the parts in this package: `LatentCache` (the frozen autoencoder and
the latent cache), `FlowSampling` (prediction and validation), `NFTTraining` (the nft stage) and
the step drawing of `curriculum`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.migration import run_part
from rtgen.core.registry import register_task
from rtgen.diffusion.flow import FLOW_SAMPLERS, flow_loss
from rtgen.tasks.base import Task, copy_run
from rtgen.tasks.diffkt3d.card import model_card
from rtgen.tasks.diffkt3d.curriculum import draw_slots
from rtgen.tasks.diffkt3d.latents import LatentCache, LatentCases
from rtgen.tasks.diffkt3d.nft_stage import LORA_TARGETS, NFTTraining
from rtgen.tasks.diffkt3d.sampling import FlowSampling
from rtgen.tasks.diffkt3d.sections import (
    AUTOENCODER_DIR,
    Any2AnyConfig,
    FlowConfig,
    KT3DDataConfig,
    KT3DSamplingConfig,
    LatentConfig,
    NFTConfig,
    PriorConfig,
)


@register_task("diffkt3d")
class DiffKT3DTask(LatentCache, FlowSampling, NFTTraining, Task):
    """Any-to-any flow matching over latent planning modalities with a 3D DiT (see `rtgen.tasks.diffkt3d`)."""

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
        self._steps = 0
        self._generator = torch.Generator().manual_seed(0)
        self._rewards: list[list[float]] = []  # nft stage: this epoch's candidate rewards, one list per patient
        self._rollouts: dict[int, tuple[torch.Tensor, list[float]]] = {}  # nft.reuse_rollouts: patient -> (z, R)
        if self.any2any.stage == "nft":  # the nft stage is there to raise the scorecard: keep its best epoch
            self.selection_metric, self.higher_is_better = "scorecard", True

    @property
    def init_on_resume(self) -> bool:
        """The nft stage's frozen starting policy (`_old_model`) is train.init's network, also on --resume."""
        return self.any2any.stage == "nft"

    def start_epoch(self, seed: int, epoch: int, step: int, rank: int) -> None:
        self._generator.manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
        self._steps = step

    def start_from(self, init_config: dict) -> None:
        """A stage starting from another run's weights keeps that run's latent standardisation: the
        network learned in those units, and statistics of another set of patients (the nft stage's
        subset) would shift every input it sees."""
        if init_config.get("latent_stats"):
            self.latent_stats = init_config["latent_stats"]

    def metric_unit(self, name: str) -> str:
        name = name.removeprefix("val_")
        return "" if name in ("scorecard", "reward") else "s" if name.startswith("seconds") else "Gy"

    # ---- data
    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True):
        cases = self.cached_cases(self.data.train, self.data.max_train_patients, "train", self.data.prior_train,
                                  progress)
        missing = [(str(c["id"]), m) for c in cases for m in self.modalities if f"z_{m}" not in c]
        if missing:
            raise RtgenError(f"training patients lack slots the model needs: {missing[:5]}")
        if self.latent_stats is None:
            self.latent_stats = self.measure_latent_stats(cases)
        self._train_cases = cases  # the nft stage scores its candidates against these patients' plans and structures
        return LatentCases(cases, self)

    def val_data(self, progress: bool = True) -> list[dict]:
        return self.cached_cases(self.data.val, self.data.max_val_patients, "val", self.data.prior_val, progress)

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_patients": len(train_set), "val_patients": len(val_data)}

    def collate(self, items: list[dict]) -> dict:
        return {"latents": torch.stack([it["latents"] for it in items]),
                "index": torch.tensor([it["index"] for it in items])}

    # ---- training
    def prepare_model(self, model, train_set, device, pretrain: bool, progress: bool = True) -> None:
        if self.any2any.stage == "nft":
            self.add_adapters(model)

    def draw_slots(self) -> tuple[list[int], int]:
        """(slot indices in model order, index of the target among them) for one step (`curriculum`)."""
        return draw_slots(self.modalities, self.any2any, self._steps, self._generator)

    def loss(self, model, batch: dict) -> torch.Tensor:
        if self.any2any.stage == "nft":
            return self.nft_loss(model, batch)
        x = batch["latents"]  # (B, S, C, d, h, w) in model modality order
        slots, pos = self.draw_slots()
        self._steps += 1
        target = slots[pos]
        conds = [s for s in slots if s != target]
        return flow_loss(self.predictor(model, x[:, conds], conds, target), x[:, target], self.flow.schedule(),
                         generator=self._generator, prediction=self.flow.prediction)

    # ---- checkpoints
    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), "latent_stats": self.latent_stats}

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> DiffKT3DTask:
        task = super().from_checkpoint(config, source)
        task.latent_stats = config.get("latent_stats")
        return task

    def load_model(self, weights, merged: bool = True):
        """The trained DiT; the run's own copy of the autoencoder (`autoencoder/`) is used from now on,
        wherever the run was trained. An nft run's LoRA adapters are folded into the base weights
        unless `merged=False` (unmerged, peft's wrappers ran prediction about 2x slower)."""
        copied = run_part(Path(weights).parent, AUTOENCODER_DIR)
        if copied.is_dir():
            self._autoencoder_run_dir = copied
            self._autoencoder = None
        if self.any2any.stage != "nft":
            return super().load_model(weights)
        from rtgen.core.checkpoint import check_and_load, load_weights
        from rtgen.layers.lora import add_lora, merge_lora

        model = add_lora(self.build_model(), rank=self.nft.lora_rank, target_modules=LORA_TARGETS)
        check_and_load(model, load_weights(weights), weights)
        return merge_lora(model) if merged else model  # merged: the base network's speed at prediction

    def write_run_files(self, run_dir) -> None:
        copy_run(self.autoencoder_source(), Path(run_dir) / AUTOENCODER_DIR)

    def model_card(self, summary: dict) -> str:
        return model_card(self, summary)
