"""DiffKT3D end to end at toy size: volume autoencoder, stages any2any, dose and nft (ScardNFT),
then `rtgen predict` of a dose (best of 2) and the imputation of a non-dose modality."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.checkpoint import read_config
from rtgen.data.sources import load_patient
from rtgen.data.sources.nifti import read_nifti
from rtgen.data.sources.openkbp import write_dose_csv
from rtgen.data.transforms.modalities import MODALITIES, decode_modality, patient_modalities
from rtgen.layers.lora import merge_lora
from rtgen.tasks import task_from_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "rtgen" / "examples" / "openkbp"
SLOTS = ["ct", "ptv", "oar", "body", "prior", "dose"]


def run(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_modalities_round_trip_their_physical_meaning():
    patient = load_patient(EXAMPLES / "pt_204")
    vols, crop = patient_modalities(patient, prior_gy=patient.dose, depth=64)
    assert set(vols) == set(MODALITIES) and all(v.shape == (64, 128, 128) for v in vols.values())
    assert all(v.min() >= -1 and v.max() <= 1 for v in vols.values())
    assert crop.take(patient.possible_dose_mask).sum() == patient.possible_dose_mask.sum()  # the slab holds the mask
    np.testing.assert_allclose(decode_modality("dose", vols["dose"]), crop.take(patient.dose), atol=1e-4)
    ptv = decode_modality("ptv", vols["ptv"])
    assert set(np.unique(ptv)) <= {0.0, 56.0, 63.0, 70.0} and (ptv[crop.take(patient.structures["PTV70"])] == 70).all()
    labels = decode_modality("oar", vols["oar"])
    assert (labels[crop.take(patient.structures["Brainstem"])] == 1).all()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("kt3d")
    priors = root / "priors"
    priors.mkdir()
    for pid in ("pt_204", "pt_219"):  # a stand-in prior: the plan, 10 % cold
        write_dose_csv(priors / f"{pid}.csv", load_patient(EXAMPLES / pid, load_ct=False).dose * 0.9)
    autoencoder = {"task": "volume_autoencoder",
                   "model": {"name": "autoencoder_kl", "channels": [4, 8, 8], "latent_channels": 2,
                             "norm_num_groups": 4},
                   "data": {"train": str(EXAMPLES), "val": str(EXAMPLES), "depth": 32, "crop": 16,
                            "crops_per_patient": 1, "val_all_modalities": 1, "max_val_patients": 1},
                   "train": {"epochs": 1, "batch_size": 2, "warmup_steps": 1, "out": str(root / "autoencoder")}}
    run(["train", write(root / "autoencoder.yaml", autoencoder)])
    dit = {"task": "diffkt3d",
           "model": {"name": "diffkt3d", "modalities": SLOTS, "patch": [2, 4, 4], "dim": 32, "depth": 1, "heads": 2},
           "latent": {"autoencoder_run": str(root / "autoencoder")},
           "data": {"train": str(EXAMPLES), "val": str(EXAMPLES), "prior_train": str(priors), "prior_val": str(priors),
                    "cache": str(root / "cache"), "max_val_patients": 1},
           "any2any": {"stage": "any2any", "curriculum_steps": 2},
           "sampling": {"steps": 2, "best_of": 2},
           "nft": {"candidates": 2, "steps": 2, "lora_rank": 2, "explore": 0.1, "explore_structures": 0.05},
           "train": {"epochs": 1, "batch_size": 2, "warmup_steps": 1, "max_steps_per_epoch": 2,
                     "out": str(root / "any2any")}}
    run(["train", write(root / "any2any.yaml", dit)])
    dit["any2any"] = {"stage": "dose"}
    dit["train"].update(out=str(root / "dose"), init=str(root / "any2any"))
    run(["train", write(root / "dose.yaml", dit)])
    dit["any2any"] = {"stage": "nft"}
    dit["train"].update(out=str(root / "nft"), init=str(root / "dose"), batch_size=1, max_steps_per_epoch=1)
    run(["train", write(root / "nft.yaml", dit)])
    return root


def test_every_stage_trains_and_validates_on_openkbp_scores(runs):
    for stage in ("any2any", "dose", "nft"):
        config = read_config(runs / stage / "config.json")
        metrics = config["validation"] if "validation" in config else {}
        assert config["task"] == "diffkt3d" and config["latent_stats"]["dose"]
        assert (runs / stage / "autoencoder" / "config.json").exists()  # the run carries its autoencoder
        if metrics:
            assert np.isfinite(metrics["dose_score"]) and 0 <= metrics["scorecard"] <= 1
            assert 0 <= metrics["reward"] <= 1


def test_the_nft_stage_logs_its_training_reward_every_epoch(runs):
    import csv

    rows = list(csv.DictReader((runs / "nft" / "log.csv").open()))
    assert rows and all(k in rows[0] for k in ("train_reward", "train_reward_best", "train_reward_spread"))
    mean, best, spread = (float(rows[-1][k]) for k in ("train_reward", "train_reward_best", "train_reward_spread"))
    assert np.isfinite(mean) and best >= mean and spread >= 0
    assert "train_reward" not in list(csv.DictReader((runs / "dose" / "log.csv").open()))[0]  # dose stage: no sampling


def test_the_nft_stage_saves_lora_and_predicts_with_it_merged(runs):
    task = task_from_checkpoint(read_config(runs / "nft" / "config.json"))
    adapted = task.load_model(runs / "nft" / "model.safetensors", merged=False).eval()
    assert any("lora" in n for n, _ in adapted.named_parameters())
    case = task.cached_case(EXAMPLES / "pt_204", str(runs / "priors"))
    x = task.case_latents(case, task.modalities)[None].float()
    ids, t = torch.arange(x.shape[1]), torch.tensor([0.5])
    roles = torch.zeros(1, x.shape[1], dtype=torch.bool)
    roles[0, -1] = True
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (gates and heads start at 0), adapters included
        for p in adapted.parameters():
            p.normal_(0, 0.05, generator=g)
        want = adapted(x, ids, roles, t)
        merged = merge_lora(copy.deepcopy(adapted))
        got = merged(x, ids, roles, t)
        for n, p in adapted.named_parameters():
            if "lora_B" in n:
                p.zero_()
        before = adapted(x, ids, roles, t)  # the base alone
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert not any("lora" in n for n, _ in task.load_model(runs / "nft" / "model.safetensors").named_parameters())
    assert (want - before).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_predict_best_of_two_writes_doses_inside_the_mask(runs, tmp_path):
    out = tmp_path / "pred"
    run(["predict", "--model", str(runs / "nft"), "--patients", str(EXAMPLES / "pt_219"), "--out", str(out),
         "--steps", "2", "--best-of", "2", "--sampler", "heun", "--format", "nifti"])  # prior: the shipped lightgbm_dose
    for pid in ("pt_219",):
        dose, _ = read_nifti(out / f"{pid}.nii.gz")
        mask = load_patient(EXAMPLES / pid, load_ct=False).possible_dose_mask
        assert dose.shape == mask.shape and dose.min() >= 0 and (dose[~mask] == 0).all()


def test_a_dose_latent_equal_to_the_priors_gives_back_the_prior_at_full_resolution(runs):
    """latent.dose_from_prior: a dose is prior + D(z) - D(z_prior), so the autoencoder's blur cancels."""
    config = read_config(runs / "dose" / "config.json")
    task = task_from_checkpoint(config)
    case = task.cached_case(EXAMPLES / "pt_204", str(runs / "priors"))
    prior = case["prior"].astype(np.float32)
    z = task.case_latents(case, ["prior"])  # standardised as a prior: re-standardise as a dose
    z = task.standardise(task.unstandardise(z, "prior"), "dose")
    # prior + D(z) - D(z_prior) with z = z_prior up to the float32 round trip of the latent scaling (a
    # few ulps a latent): the two decodes cancel up to float32 rounding through the decoder's
    # convolutions, whose accumulation order depends on the BLAS build. 256 ulps of the decoded
    # range (|values| <= 1) bounds that with room (about 3e-5, 2e-3 Gy on the 80 Gy dose scale).
    tol = 256 * np.finfo(np.float32).eps
    np.testing.assert_allclose(task.dose_volumes(case, z)[0], np.clip(prior, -1, 1), atol=tol)
    blurred = task.decode(z, "dose")[0]  # the plain decode loses the prior's detail
    assert np.abs(blurred - prior).mean() > 10 * np.abs(task.dose_volumes(case, z)[0] - prior).mean() + 1e-4
    task.latent.dose_from_prior = False
    np.testing.assert_allclose(task.dose_volumes(case, z)[0], blurred, atol=1e-6)


def test_structure_edits_scale_each_structures_dose_and_spread_the_candidates_rewards(runs):
    """nft.explore_structures: a candidate's latent moves by E(edited dose) - E(dose); with no edit it
    stays put, and with one the decoded doses change structure by structure and score differently."""
    from rtgen.core.structures import unpack_structures

    task = task_from_checkpoint(read_config(runs / "dose" / "config.json"))
    case = task.cached_case(EXAMPLES / "pt_204", str(runs / "priors"))
    z = task.case_latents(case, ["prior"])
    z = task.standardise(task.unstandardise(z, "prior"), "dose").expand(3, -1, -1, -1, -1).clone()
    task._generator = torch.Generator().manual_seed(0)
    task.nft.explore_structures = 1e-9
    np.testing.assert_allclose(task.edit_by_structure(case, z).numpy(), z.numpy(), atol=1e-4)
    task.nft.explore_structures = 0.2
    edited = task.edit_by_structure(case, z)
    before, after = task.dose_volumes(case, z), task.dose_volumes(case, edited)
    gy_before, gy_after = decode_modality("dose", before[0]), decode_modality("dose", after[0])
    ptv = unpack_structures(case["bits"])["PTV70"]
    assert abs(gy_after[ptv].mean() / gy_before[ptv].mean() - 1) > 0.01  # the target's dose was scaled
    assert not np.allclose(after[0], after[1], atol=1e-3)  # each candidate drew its own factors
    rewards = [task.case_reward(case, decode_modality("dose", v), None) for v in after]
    assert np.std(rewards) > 0


def test_predicting_x0_an_untrained_network_generates_the_prior(runs):
    """flow.prediction "sample" with the prior slot: x0 = the prior's latent + the network's output,
    which is 0 at initialisation, so sampling lands on the prior and the decoded dose is the prior."""
    import dataclasses

    from rtgen.tasks.diffkt3d import KT3DSamplingConfig

    task = task_from_checkpoint(read_config(runs / "dose" / "config.json"))
    task.flow = dataclasses.replace(task.flow, prediction="sample")
    case = task.cached_case(EXAMPLES / "pt_204", str(runs / "priors"))
    vol, _ = task.generate(task.build_model(), case, "dose", KT3DSamplingConfig("euler", 3, 1, 0))
    np.testing.assert_allclose(vol, np.clip(case["prior"].astype(np.float32), -1, 1), atol=1e-4)
    task.flow = dataclasses.replace(task.flow, prediction="velocity")  # the paper's v: noise, not the prior
    vol, _ = task.generate(task.build_model(), case, "dose", KT3DSamplingConfig("euler", 3, 1, 0))
    assert np.abs(vol - case["prior"].astype(np.float32)).mean() > 1e-2


def test_imputes_a_non_dose_modality(runs, tmp_path):
    out = tmp_path / "oar"
    run(["predict", "--model", str(runs / "dose"), "--patients", str(EXAMPLES / "pt_204"), "--out", str(out),
         "--steps", "2", "--target", "oar"])
    labels, _ = read_nifti(out / "pt_204_oar.nii.gz")
    assert labels.shape == (128, 128, 128) and set(np.unique(labels)) <= set(range(8))


def test_bad_target_and_best_of_on_a_dose_only_model_are_refused(runs, tmp_path):
    result = CliRunner().invoke(app, ["predict", "--model", str(runs / "dose"), "--patients", str(EXAMPLES),
                                      "--out", str(tmp_path / "x"), "--target", "prior"])
    assert result.exit_code != 0 and "--target prior" in result.output
    result = CliRunner().invoke(app, ["predict", "--model", str(runs / "dose"), "--patients", str(EXAMPLES),
                                      "--out", str(tmp_path / "y"), "--sampler", "ddpm"])
    assert result.exit_code != 0 and "--sampler ddpm: diffkt3d samples with one of euler, heun" in result.output
    assert not (tmp_path / "y").exists()  # refused before any output


def test_runs_of_other_tasks_are_refused_before_training(runs, tmp_path):
    config = yaml.safe_load((runs / "dose.yaml").read_text())
    config["train"].update(out=str(tmp_path / "x"), init=str(runs / "autoencoder"))  # an autoencoder, not a diffkt3d run
    result = CliRunner().invoke(app, ["train", write(tmp_path / "x.yaml", config)])
    assert result.exit_code != 0 and "is a volume_autoencoder run of autoencoder_kl, not a diffkt3d run" in result.output
    assert not (tmp_path / "x").exists()
    config["train"]["init"] = ""
    config["latent"] = {"autoencoder_run": str(runs / "any2any")}  # a DiT, not an autoencoder
    result = CliRunner().invoke(app, ["train", write(tmp_path / "y.yaml", config)])
    assert result.exit_code != 0 and "is a diffkt3d run, not a volume_autoencoder one" in result.output


def test_any2any_curriculum_goes_from_all_conditions_to_subsets_and_the_dose_stage_always_targets_dose():
    from rtgen.tasks.diffkt3d import DiffKT3DTask

    arch = {"modalities": SLOTS, "dim": 32, "depth": 1, "heads": 2}
    task = DiffKT3DTask("diffkt3d", arch, {"any2any": {"stage": "any2any", "curriculum_steps": 100,
                                                       "targets": ["ct", "oar", "dose"]}})
    first = [task.draw_slots() for _ in range(50)]
    assert all(len(slots) == 6 for slots, _ in first)  # step 0: every other slot is a condition
    assert {SLOTS[slots[pos]] for slots, pos in first} == {"ct", "oar", "dose"}  # targets drawn among the allowed
    task._steps = 100
    later = [task.draw_slots() for _ in range(200)]
    assert min(len(slots) for slots, _ in later) == 2 and max(len(slots) for slots, _ in later) == 6
    dose = DiffKT3DTask("diffkt3d", arch, {"any2any": {"stage": "dose"}})
    assert all(SLOTS[s[p]] == "dose" and len(s) == 6 for s, p in (dose.draw_slots() for _ in range(20)))


def test_the_nft_stage_resumes_as_if_uninterrupted(runs, tmp_path):
    """`rtgen train --resume` of an nft run: the frozen starting policy comes from train.init
    again (not from the freshly built network), so the resumed run ends where an uninterrupted one does."""
    from rtgen.core.checkpoint import load_weights
    from rtgen.engine.config import load_config
    from rtgen.engine.trainer import Trainer

    straight = Trainer(load_config(runs / "nft.yaml", ["train.epochs=2"]), tmp_path / "straight", progress=False)
    straight.fit()
    interrupted = Trainer(load_config(runs / "nft.yaml", ["train.epochs=2"]), tmp_path / "resumed", progress=False)
    interrupted.fit(stop_after=1)
    resumed = Trainer(load_config(tmp_path / "resumed" / "resolved_config.yaml"), tmp_path / "resumed", resume=True,
                      progress=False)
    resumed.fit()
    a = load_weights(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_weights(tmp_path / "resumed" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_the_nft_stage_reuses_each_patients_scored_candidates_in_later_epochs_and_runs(runs, tmp_path):
    """nft.reuse_rollouts: the frozen starting policy samples and scores a patient once, in its first
    epoch; later epochs, and later runs from the same policy and settings (the rollouts are stored
    beside the latent cache), train on the same candidates and rewards. Off, every epoch draws anew.
    The nft stage keeps its best epoch by the validation scorecard."""
    from rtgen.engine.config import load_config
    from rtgen.engine.trainer import Trainer

    calls, kept = [], []
    for name, reuse in (("first", True), ("again", True), ("off", False)):
        trainer = Trainer(load_config(runs / "nft.yaml", ["train.epochs=2", "train.max_steps_per_epoch=2",
                                                         f"nft.reuse_rollouts={str(reuse).lower()}"]),
                          tmp_path / name, progress=False)
        task, drawn = trainer.task, []
        real = task.rollout

        def counted(case, *args, real=real, drawn=drawn):
            drawn.append(str(case["id"]))
            return real(case, *args)

        task.rollout = counted
        trainer.fit()
        calls.append(drawn)
        kept.append({i: (z.clone(), r) for i, (z, r) in task._rollouts.items()})
        assert task.selection_metric == "scorecard" and task.higher_is_better
    assert len(calls[0]) == 2 and len(set(calls[0])) == 2  # one draw per patient, over two epochs
    assert calls[1] == []  # the second run read them from disk
    assert kept[0].keys() == kept[1].keys() and all(
        torch.equal(kept[0][i][0], kept[1][i][0]) and kept[0][i][1] == kept[1][i][1] for i in kept[0])
    assert len(calls[2]) == 4 and kept[2] == {}  # off: drawn every epoch, nothing kept


def test_a_stage_started_from_another_run_keeps_its_latent_standardisation(runs, tmp_path):
    """train.init: the nft stage on a subset of the patients still standardises latents as the dose
    stage did (the network learned in those units); statistics of the subset would shift every input."""
    from rtgen.engine.config import load_config
    from rtgen.engine.trainer import Trainer

    trainer = Trainer(load_config(runs / "nft.yaml", ["data.max_train_patients=1"]), tmp_path / "c1", progress=False)
    trainer.setup()
    assert len(trainer.train_set) == 1
    assert trainer.task.latent_stats == read_config(runs / "dose" / "config.json")["latent_stats"]
    alone = Trainer(load_config(runs / "nft.yaml", ["data.max_train_patients=1", "train.init="]), tmp_path / "c2",
                    progress=False)
    alone.task.train_dataset(0, 0, False)  # from scratch: the statistics of its own patients
    assert alone.task.latent_stats != trainer.task.latent_stats


def test_scoring_reports_each_patient_for_paired_comparisons(runs):
    """score_cases(per_patient=True): each patient's dose error, scorecard and reward, which average
    to the reported dose score, scorecard and reward."""
    from rtgen.tasks.diffkt3d import KT3DSamplingConfig

    config = read_config(runs / "nft" / "config.json")
    task = task_from_checkpoint(config)
    model = task.load_model(runs / "nft" / "model.safetensors").eval()
    cases = [task.cached_case(EXAMPLES / pid, str(runs / "priors")) for pid in ("pt_204", "pt_219")]
    out = task.score_cases(model, cases, KT3DSamplingConfig("euler", 2, 1, 0), per_patient=True)
    each = out["per_patient"]
    assert set(each) == {"pt_204", "pt_219"}
    for key, name in (("dose_error", "dose_score"), ("scorecard", "scorecard"), ("reward", "reward")):
        assert np.isclose(np.mean([p[key] for p in each.values()]), out[name])


def test_a_run_written_under_the_old_names_loads_and_predicts_as_today(runs, tmp_path):
    """A run folder from before the renames (`latent.vae_run`, stage `scardnft`, its autoencoder in
    `vae/`) is read under today's names (`rtgen.core.migration`): the same merged network, the same
    autoencoder (from its old folder) and the same sampled dose latent. (Decoding is left out: it is
    the slow part, and the autoencoders' weights are compared instead.)"""
    import json
    import shutil

    from rtgen.diffusion.flow import sample_flow
    from rtgen.inference import load_predictor

    old = tmp_path / "old"
    shutil.copytree(runs / "nft", old, ignore=shutil.ignore_patterns("last"))
    (old / "autoencoder").rename(old / "vae")
    config = json.loads((old / "config.json").read_text())
    config["latent"]["vae_run"] = config["latent"].pop("autoencoder_run")
    config["any2any"]["stage"] = "scardnft"
    (old / "config.json").write_text(json.dumps(config))
    latents, autoencoders = [], []
    for folder, part in ((runs / "nft", "autoencoder"), (old, "vae")):
        predictor = load_predictor(folder, device="cpu")
        task = predictor.task
        assert task.any2any.stage == "nft" and predictor.config["latent"]["autoencoder_run"]
        assert task.autoencoder_source() == folder / part
        assert not any("lora" in n for n, _ in predictor.model.named_parameters())  # merged as an nft run
        autoencoders.append(task.autoencoder.state_dict())
        task.data.cache = str(runs / "cache")  # the latents the training run cached
        case = task.cached_case(EXAMPLES / "pt_204", str(runs / "priors"))
        dose_id = task.modalities.index("dose")
        cond_ids = [i for i in range(len(task.modalities)) if i != dose_id]
        conds = task.case_latents(case, [task.modalities[i] for i in cond_ids])[None]
        fn = task.velocity(predictor.model, conds, cond_ids, dose_id)
        latents.append(sample_flow(fn, (1, *conds.shape[2:]), task.flow.schedule(), 2, "euler",
                                   generator=torch.Generator().manual_seed(0)))
    assert autoencoders[0].keys() == autoencoders[1].keys()
    assert all(torch.equal(autoencoders[0][k], autoencoders[1][k]) for k in autoencoders[0])
    assert torch.equal(latents[0], latents[1])
