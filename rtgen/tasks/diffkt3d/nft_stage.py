"""The nft stage of DiffKT3D: ScardNFT post-training with LoRA adapters and scorecard rewards.

The network gets LoRA adapters on its attention and FFN layers (base frozen but the modulation
networks, paper B.5); each step samples `nft.candidates` doses per patient with the stage's frozen
starting policy, scores them with the clinical scorecard (`rtgen.dosimetry.scorecard`, MAE anchor
against the plan), turns rewards into eq. (10) optimality probabilities within each patient and
minimises L = L_flow + lambda L_nft (eq. 13), both terms in the network's own units (x0 for
`flow.prediction: sample`, as the dose stage trained).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from rtgen.core.structures import unpack_structures
from rtgen.data.transforms.dose_edits import structure_scale_field
from rtgen.data.transforms.modalities import decode_modality, dose_to_unit, unit_to_dose
from rtgen.diffusion.flow import sample_flow
from rtgen.diffusion.nft import nft_objective, optimality_from_rewards
from rtgen.dosimetry.scorecard import Scorecard, reward
from rtgen.tasks.diffkt3d.latents import save_arrays

LORA_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.0", "ffn.2")  # ScardNFT adapters (paper B.5)
NFT_TRAINABLE = ("modulation", "time_projection")  # besides LoRA: the modulation networks


class NFTTraining:
    """The nft stage's training step, its rollouts and rewards (a part of `DiffKT3DTask`)."""

    _old_model = None

    def add_adapters(self, model) -> None:
        """Freeze a copy of the network as the starting policy; give the network LoRA adapters and
        leave only them and the modulation networks trainable."""
        from rtgen.layers.lora import add_lora, freeze_base

        self._old_model = copy.deepcopy(model).eval().requires_grad_(False)
        add_lora(model, rank=self.nft.lora_rank, target_modules=LORA_TARGETS)
        freeze_base(model, trainable=NFT_TRAINABLE)

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
        # both losses in the network's own units (x0 for flow.prediction "sample"), as the earlier stages trained
        total, _ = nft_objective(
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
                save_arrays(path, {"z": z.float().cpu().numpy(), "rewards": np.array(rewards),
                                   "prior_source": np.array(source)})
        z, rewards = self._rollouts[index]
        return z.to(conds), rewards

    def rollout_key(self) -> str:
        """What a stored rollout depends on: the starting policy's weights, the latent cache (autoencoder)
        and standardisation, and the settings that draw, edit and score the candidates."""
        if not hasattr(self, "_rollout_key"):
            h = hashlib.sha256(self.autoencoder_key().encode())
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
        """The nft stage's training reward over the epoch (this process's patients): the mean candidate
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
