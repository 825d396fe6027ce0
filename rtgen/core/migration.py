"""Run folders written by older rtgen versions: their config.json keys and sub-folders under today's names.

A run's config.json is migrated when its task is rebuilt (`task_from_checkpoint`), by the tables
below, so checkpoints trained before a rename load and predict as they did. A run's sub-folders
(the copies of the models it depends on) are looked up under today's name first, then under the
name older runs gave them (`run_part`).
"""

from __future__ import annotations

import copy
from pathlib import Path

# (task, old dotted key, new dotted key): a section or a key of one, renamed
RENAMED_KEYS: tuple[tuple[str, str, str], ...] = (
    ("image_synthesis", "latent.vae", "latent.autoencoder"),  # the latent autoencoder is "autoencoder"
    ("image_synthesis", "latent.vae_run", "latent.autoencoder_run"),
    ("image_synthesis", "prior", "base"),  # what DiffMa's refiner starts from is its "base"
    ("diffkt3d", "latent.vae_run", "latent.autoencoder_run"),
)
# (task, dotted key, old value, new value)
RENAMED_VALUES: tuple[tuple[str, str, object, object], ...] = (
    ("diffkt3d", "any2any.stage", "scardnft", "nft"),  # DiffKT3D's stages: any2any, dose, nft
)
# a run's sub-folder -> the name older runs gave it
RENAMED_PARTS: dict[str, str] = {"autoencoder": "vae", "base": "prior"}


def _parent(config: dict, dotted: str, create: bool = False) -> tuple[dict | None, str]:
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
        if not isinstance(node.get(part), dict):
            if not create:
                return None, leaf
            node[part] = {}
        node = node[part]
    return node, leaf


def migrate_sections(sections: dict, task: str) -> dict:
    """A copy of a mapping of config sections (config.json, or the training config it records) with
    the keys and values renamed since it was written; already current sections come back unchanged."""
    out = copy.deepcopy(sections)
    for name, old, new in RENAMED_KEYS:
        parent, leaf = _parent(out, old)
        if name != task or parent is None or leaf not in parent:
            continue
        target, new_leaf = _parent(out, new, create=True)
        if target is parent and new_leaf not in parent:  # renamed where it stands, the order kept
            items = list(parent.items())
            parent.clear()
            parent.update((new_leaf if k == leaf else k, v) for k, v in items)
        else:  # a config holding both keeps today's
            target.setdefault(new_leaf, parent.pop(leaf))
    for name, key, old, new in RENAMED_VALUES:
        parent, leaf = _parent(out, key)
        if name == task and parent is not None and parent.get(leaf) == old:
            parent[leaf] = new
    return out


def migrate_config(config: dict, task: str) -> dict:
    """A run's config.json (of task `task`) under today's names, its recorded training config included."""
    out = migrate_sections(config, task)
    training = out.get("training")
    if isinstance(training, dict) and isinstance(training.get("config"), dict):
        training["config"] = migrate_sections(training["config"], task)
    return out


def run_part(run_dir: str | Path, name: str) -> Path:
    """The sub-folder `name` of a run folder (e.g. `autoencoder`), or the one an older run wrote
    under its former name when only that exists."""
    path = Path(run_dir) / name
    old = RENAMED_PARTS.get(name)
    if not path.exists() and old is not None and (Path(run_dir) / old).exists():
        return Path(run_dir) / old
    return path
