"""Sampling a DiffKT3D slot: the flow ODE from noise, best of n by scorecard, decoded to a patient's grid.

The target's latent is integrated from noise by the flow ODE (`sampling.method`, Euler, Heun or
DPM++, `sampling.steps`), `best_of` candidates from different noises are decoded and the one with
the best scorecard reward is kept (no reference needed: the reward's MAE anchor is off at
prediction). A dose is clamped at 0 Gy and zeroed outside the possible dose mask; another target
(`impute`) is decoded to its physical meaning (HU, prescription Gy, OAR label, mask).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rtgen.core.errors import RtgenError
from rtgen.core.structures import pack_structures, unpack_structures
from rtgen.data.records import Patient
from rtgen.data.transforms.modalities import Crop, decode_modality, patient_modalities, unit_to_dose
from rtgen.diffusion.flow import as_velocity, sample_flow
from rtgen.dosimetry import OpenKBPScores
from rtgen.dosimetry.gdp_hmm import gdp_hmm_mae
from rtgen.tasks.diffkt3d.sections import KT3DSamplingConfig


class FlowSampling:
    """Prediction, imputation and validation of the DiffKT3D task (a part of `DiffKT3DTask`)."""

    def predictor(self, model, conds: torch.Tensor, cond_ids: list[int], target_id: int):
        """fn(x_t, t) -> the network's prediction (flow.prediction) for the target slot given fixed
        condition latents (n, S-1, C, ...). Predicting x0 of the dose with the prior among the
        conditions, the prediction is the prior's latent (as a dose latent) plus the network's output."""
        ids = sorted(cond_ids + [target_id])
        pos = ids.index(target_id)
        ids_t = torch.tensor(ids)
        prior_id, start = (self.modalities.index("prior") if "prior" in self.modalities else None), None
        if (self.flow.prediction == "sample" and self.latent.dose_from_prior and prior_id in cond_ids
                and self.modalities[target_id] == "dose"):  # the conditions are fixed: re-standardise once
            start = self.standardise(self.unstandardise(conds[:, cond_ids.index(prior_id)].float(), "prior"), "dose")

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = x_t.shape[0]
            c = conds.expand(n, *conds.shape[1:]) if conds.shape[0] == 1 else conds
            inp = torch.cat([c[:, :pos], x_t[:, None], c[:, pos:]], 1)
            roles = torch.zeros(n, len(ids), dtype=torch.bool, device=x_t.device)
            roles[:, pos] = True
            out = model(inp, ids_t.to(x_t.device), roles, t)[:, pos]
            return out if start is None else out + start.to(out.dtype)
        return fn

    def velocity(self, model, conds: torch.Tensor, cond_ids: list[int], target_id: int):
        """velocity_fn(x_t, t) of the target slot given fixed condition latents (n, S-1, C, ...)."""
        return as_velocity(self.predictor(model, conds, cond_ids, target_id), self.flow.prediction)

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
        5.08 Gy as D(E(dose)) (`benchmarks/diffkt3d_autoencoder_floor.py --prior`; docs/models/diffkt3d.md)."""
        vols = self.decode(z, "dose")
        if not (self.latent.dose_from_prior and "prior" in case and "z_prior" in case):
            return vols
        decoded_prior = self.decode(self.case_latents(case, ["prior"]).to(z.device), "prior")[0]
        return np.clip(case["prior"].astype(np.float32)[None] + vols - decoded_prior, -1.0, 1.0)

    def case_dose(self, case: dict, vol: np.ndarray) -> np.ndarray:
        """A generated cropped dose in [-1, 1] -> Gy on the patient's grid, 0 outside the mask."""
        crop = Crop(int(case["crop"][0]), int(case["crop"][1]))
        full_mask = crop.put(case["mask"].astype(np.float32), tuple(case["grid"]))
        return crop.put(unit_to_dose(vol), tuple(case["grid"])) * full_mask

    def predict_case(self, patient: Patient, device="cpu", target: str = "dose") -> dict:
        """A new patient's condition latents for generating `target` (its dose too when it has one and
        the target is another slot). A non-dose target goes without the dose prior: the any2any stage
        trains on subsets of conditions, and it spares running the dose model."""
        with_prior = target == "dose"
        prior = self.prior_dose(patient) if with_prior and "prior" in self.modalities else None
        vols, crop = patient_modalities(patient, prior, depth=self.depth)
        latents = self.encode(vols, [m for m in self.modalities if m in vols and m != target], device)
        return {**{f"z_{k}": v for k, v in latents.items()}, **({"prior": vols["prior"]} if prior is not None else {}),
                "crop": np.array([crop.start, crop.depth]),
                "grid": np.array(patient.grid), "spacing": np.array(patient.spacing),
                "bits": crop.take(pack_structures(patient.structures, patient.grid)),
                "mask": crop.take(patient.possible_dose_mask)}

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
        return decode_modality(target, crop.put(vol, tuple(case["grid"]), -1.0))

    def sampling_from(self, sampling) -> KT3DSamplingConfig:
        """The run's sampling settings, overridden by a CLI SamplingConfig's sampler/steps/seed/best_of if
        given (a sampler of None keeps the run's own ODE solver)."""
        if sampling is None:
            return self.sampling
        best_of = getattr(sampling, "best_of", None)
        return KT3DSamplingConfig(method=getattr(sampling, "sampler", None) or self.sampling.method,
                                  steps=getattr(sampling, "steps", self.sampling.steps),
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
