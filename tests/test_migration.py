"""Run folders written before the renames load under today's names (`rtgen.core.migration`): the
keys of their config.json (`latent.vae`, `latent.vae_run`, DiffMa's `prior` section, DiffKT3D's
stage `scardnft`) and their sub-folders (`vae/`, `prior/`). The end-to-end checks that such runs
predict as today's are in test_diffkt3d_task.py and test_image_synthesis.py. Cost: about 0.05 s
once the task registry is loaded (loading it, shared with the rest of the suite, takes seconds)."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from rtgen.core.checkpoint import read_config
from rtgen.core.migration import migrate_config, run_part
from rtgen.tasks import task_from_checkpoint

HUB = Path(str(resources.files("rtgen"))) / "hub"


def test_old_keys_and_values_are_renamed_in_place_and_current_configs_are_unchanged():
    old = {"task": "image_synthesis", "latent": {"vae": "taef2", "vae_run": "", "shift": 0.1},
           "prior": {"run": "r", "flip_average": True}, "model": {"name": "diffma"},
           "training": {"config": {"latent": {"vae": "taef2"}, "prior": {"run": "r"}}}}
    new = migrate_config(old, "image_synthesis")
    assert list(new["latent"]) == ["autoencoder", "autoencoder_run", "shift"]  # the order kept
    assert new["base"] == {"run": "r", "flip_average": True} and "prior" not in new
    assert list(new) == ["task", "latent", "base", "model", "training"]
    assert new["training"]["config"] == {"latent": {"autoencoder": "taef2"}, "base": {"run": "r"}}
    assert old["latent"]["vae"] == "taef2"  # the argument is left alone
    assert migrate_config(new, "image_synthesis") == new
    kt3d = {"latent": {"vae_run": "a"}, "any2any": {"stage": "scardnft"}, "prior": {"model": "hub:x"}}
    assert migrate_config(kt3d, "diffkt3d") == {"latent": {"autoencoder_run": "a"}, "any2any": {"stage": "nft"},
                                                "prior": {"model": "hub:x"}}  # DiffKT3D's prior stays the prior
    assert migrate_config(kt3d, "dose_regression") == kt3d  # another task's keys are its own


def test_a_run_part_is_found_under_its_old_name(tmp_path):
    assert run_part(tmp_path, "autoencoder") == tmp_path / "autoencoder"  # neither: today's name
    (tmp_path / "vae").mkdir()
    assert run_part(tmp_path, "autoencoder") == tmp_path / "vae"
    (tmp_path / "autoencoder").mkdir()
    assert run_part(tmp_path, "autoencoder") == tmp_path / "autoencoder"


def test_the_shipped_refiner_written_the_old_way_rebuilds_its_task(tmp_path):
    """hub:diffma_sts as an older rtgen wrote it: `prior` section, `latent.vae`, the UNet in `prior/`."""
    old = tmp_path / "diffma_sts"
    shutil.copytree(HUB / "diffma_sts", old, ignore=shutil.ignore_patterns("*.safetensors", "log.csv"))
    (old / "base").rename(old / "prior")
    config = json.loads((old / "config.json").read_text())
    config = {("prior" if k == "base" else k): v for k, v in config.items()}
    config["latent"] = {("vae" if k == "autoencoder" else "vae_run" if k == "autoencoder_run" else k): v
                        for k, v in config["latent"].items()}
    (old / "config.json").write_text(json.dumps(config))
    task = task_from_checkpoint(read_config(old / "config.json"), str(old / "config.json"))
    shipped = HUB / "diffma_sts" / "config.json"
    today = task_from_checkpoint(read_config(shipped), str(shipped))
    assert task.base.run == str(old / "prior") and today.base.run == str(HUB / "diffma_sts" / "base")
    assert (task.latent, task.base.flip_average, task.diffusion) == (today.latent, today.base.flip_average,
                                                                      today.diffusion)


def test_a_resumed_run_config_with_old_keys_is_checked_under_todays_names(tmp_path):
    """`rtgen train --resume RUN` of a run an older rtgen wrote: its resolved_config.yaml (DiffMa's
    `prior` section, `latent.vae`) passes the torch-free check once migrated, and is refused without."""
    import pytest
    import yaml

    from rtgen.core.errors import ConfigError
    from rtgen.engine.config import check_config

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "diffma_cpu_refiner.yaml").read_text())
    raw["prior"] = raw.pop("base")
    raw["latent"] = {("vae" if k == "autoencoder" else k): v for k, v in raw["latent"].items()}
    path = tmp_path / "resolved_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    migrated, _ = check_config(path, migrate=True)
    assert "base" in migrated and "prior" not in migrated and "autoencoder" in migrated["latent"]
    with pytest.raises(ConfigError, match="prior"):
        check_config(path)
