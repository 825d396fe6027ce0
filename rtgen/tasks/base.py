"""What a task is: the one object that knows a problem's data, loss, metrics and predictions.

The engine trains any task and the CLI predicts with any task, knowing only this interface:

- `sections`: the config sections the task owns besides `model` and `train` (name -> dataclass);
- `build_model()`: its network from the registry, with the input size its data implies;
- `train_dataset(seed, rank, progress)` and `collate(items)`: batches as dicts of tensors;
- `val_data(progress)` and `validate(model, data, device, batch_size, autocast)`: metrics by name;
- `selection_metric` (and `higher_is_better`): how the best checkpoint is chosen;
- `loss(model, batch)`: a scalar tensor;
- `checkpoint_config()` and `data_summary(...)`: what config.json records to rebuild it;
- `model_card(summary)`: the text of MODEL_CARD.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch

from rtgen.core.checkpoint import check_and_load, load_weights, read_config, resolve_checkpoint
from rtgen.core.errors import ConfigError
from rtgen.core.registry import MODELS, TASKS
from rtgen.core.schema import validate_section
from rtgen.data.sources import find_patients


def section_dict(section) -> dict:
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dataclasses.asdict(section)


class Task:
    name: ClassVar[str] = ""
    sections: ClassVar[dict[str, type]] = {}
    selection_metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    # the trainer loads `train.init` also when a run resumes: the task keeps a frozen copy of the starting
    # network beside the trained one (DiffKT3D's ScardNFT stage), which the run's checkpoint does not hold
    init_on_resume: ClassVar[bool] = False
    metric_units: ClassVar[str] = ""
    item_name: ClassVar[str] = "items"  # what one training example is, for throughput (slices/s)
    checkpoint_sections: ClassVar[tuple[str, ...]] = ()  # sections config.json keeps to rebuild the task
    weights_file: ClassVar[str] = "model.safetensors"  # what the run folder keeps the trained model in
    fits_directly: ClassVar[bool] = False  # True: fitted in one call (`fit`), not by the gradient trainer

    def __init__(self, model_name: str, arch: dict, settings: dict[str, Any], source: str = "config"):
        self.model_name, self.source = model_name, source
        self.model_entry = MODELS.get(model_name, source)
        self.settings = {name: validate_section(cls, settings.get(name), name, source)
                         for name, cls in self.sections.items()}
        for name, value in self.settings.items():  # a section named like a method (`loss`) is `<name>_cfg`
            setattr(self, f"{name}_cfg" if callable(getattr(type(self), name, None)) else name, value)
        values = {k: v for k, v in arch.items() if k not in ("name",)}
        values.update(self.implied_architecture())
        self.architecture = self.model_entry.make_config(source, **values)

    # ---- what subclasses provide
    def implied_architecture(self) -> dict:
        """Architecture keys fixed by the task's data (e.g. input channels from the features)."""
        return {}

    def build_model(self) -> torch.nn.Module:
        return self.model_entry.build(self.architecture)

    def load_model(self, weights):
        """The network with trained weights (safetensors, checked against the architecture)."""
        model = self.build_model()
        check_and_load(model, load_weights(weights), weights)
        return model

    def start_from(self, init_config: dict) -> None:
        """Called with `train.init`'s config.json before the data is read: what a fine-tuning run must
        share with the run it starts from beyond its weights (DiffKT3D: the latent standardisation)."""

    def loss(self, model, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def prepare_model(self, model, train_set, device, pretrain: bool, progress: bool = True) -> None:
        """A stage before the main optimisation, called once the network is built and before the
        optimiser sees its parameters: e.g. pre-train a part with its own loss, then freeze it
        (`requires_grad_(False)` keeps it out of the optimiser). `pretrain` is False when a run
        resumes: its checkpoint already holds the stage's result, so only the freezing is redone."""

    def start_epoch(self, seed: int, epoch: int, step: int, rank: int) -> None:
        """Called before each training epoch. A task with random draws or counters of its own (DiffKT3D:
        noise, slot draws, the curriculum's step count) sets them from these, so that a resumed run
        draws what an uninterrupted one would."""

    def epoch_stats(self) -> dict:
        """Training statistics of the task's own for the epoch just ended (DiffKT3D's ScardNFT stage:
        its candidates' rewards), added to the epoch's log row; the call starts the next epoch's."""
        return {}

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True):
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        return {k: torch.stack([it[k] for it in items]) for k, v in items[0].items() if isinstance(v, torch.Tensor)}

    def val_data(self, progress: bool = True):
        raise NotImplementedError

    def validate(self, model, data, device, batch_size: int, autocast) -> tuple[dict, Any]:
        raise NotImplementedError

    def data_summary(self, train_set, val_data) -> dict:
        return {}

    def model_card(self, summary: dict) -> str:
        return f"# {summary['model']['name']} ({self.name})\n"

    def write_run_files(self, run_dir) -> None:
        """Files besides the weights that prediction from the run folder needs (e.g. a base model the
        network refines); the trainer calls it with every best checkpoint, before config.json."""

    def metric_unit(self, name: str) -> str:
        """The unit a validation metric is printed with (`metric_units` for all, unless a task says otherwise)."""
        return self.metric_units

    def loader_options(self) -> dict:
        return {}

    # ---- shared
    def split_paths(self, folder: str, limit: int | None, what: str) -> list:
        """The patients of the split folder `data.<what>`, the first `limit` of them if set."""
        if not folder:
            raise ConfigError(self.source, f"data.{what} is not set (a split folder of patients)")
        paths = find_patients(folder)
        return paths[:limit] if limit else paths

    def arch_dict(self) -> dict:
        return section_dict(self.architecture)

    def checkpoint_config(self) -> dict:
        """The task's part of config.json: enough to rebuild the task and its network for prediction."""
        return {"task": self.name, **{name: section_dict(v) for name, v in self.settings.items()
                                      if name in self.checkpoint_sections}}

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> Task:
        model = config["model"]
        settings = {name: config.get(name) for name in cls.checkpoint_sections}
        return cls(model["name"], dict(model.get("architecture", {})), settings, source)


def task_class(task_name: str | None, model_name: str, source: str = "config") -> type[Task]:
    """The task named in a config, or the registered default of its model."""
    if task_name is None:
        task_name = MODELS.get(model_name, source).task
    if not isinstance(task_name, str):
        raise ConfigError(source, f"task must be a task name, got {task_name!r}")
    return TASKS.get(task_name, source).cls


def task_from_checkpoint(config: dict, source: str = "config.json") -> Task:
    """Rebuild a checkpoint's task (older checkpoints name no task: their model's default is used; keys
    renamed since a checkpoint was written are read under today's names, `rtgen.core.migration`)."""
    from rtgen.core.migration import migrate_config

    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(source, "model.name is missing")
    cls = task_class(config.get("task"), model["name"], source)
    return cls.from_checkpoint(migrate_config(config, cls.name), source)


def load_run(run: str | Path, what: str, source: str) -> tuple[Task, torch.nn.Module, dict]:
    """(task, network, config.json) of a run folder (or hub:<name>), for a frozen part of another model
    (an autoencoder, a base, a dose prior); `what` names the config key that pointed at it, for the error."""
    if isinstance(run, str) and run.startswith("hub:"):  # a model folder shipped inside the package
        from importlib import resources

        run = Path(str(resources.files("rtgen"))) / "hub" / run[4:]
    if not run:
        raise ConfigError(source, f"{what} is not set (a run folder)")
    weights, config_path = resolve_checkpoint(run)
    config = read_config(config_path)
    task = task_from_checkpoint(config, str(config_path))
    return task, task.load_model(weights), config


def copy_run(run: str | Path, dest: Path) -> None:
    """Copy a run's weights and config.json into `dest` (a folder inside another run), whole or not at
    all, so that the run which depends on it predicts from its own folder wherever it is moved."""
    import shutil

    if Path(dest).exists():
        return
    weights, config_path = resolve_checkpoint(run)
    tmp = Path(dest).with_name(f".{Path(dest).name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(weights, tmp / weights.name)
    shutil.copy2(config_path, tmp / "config.json")
    tmp.rename(dest)
