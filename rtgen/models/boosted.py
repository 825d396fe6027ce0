"""A gradient-boosted voxel regressor (LightGBM): dose in Gy from per-voxel features.

Why trees: on two CPU cores they learn in minutes what a 3D network needs GPU-hours for, and they
give the deep refiners a strong base (and DiffKT3D its dose prior). Why LightGBM and not hand-written
trees: it is a well-kept library with histogram learning, multithreading and NaN as "missing" built in.

It is registered like every network, but it is not an `nn.Module`: it is fitted once on sampled
voxels (`fit`), not by gradient steps, and is saved as LightGBM's own text model format (never a
pickle) beside the usual JSON config. lightgbm is imported only when a model is fitted or loaded,
so `rtgen --help` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.errors import RtgenError
from rtgen.core.registry import register_model


@dataclass
class BoostedDoseConfig:
    n_features: Annotated[int, Field(ge=1, le=4096)] = 1  # set by the task from its feature list
    objective: Literal["l2", "l1", "huber"] = "l2"
    num_leaves: Annotated[int, Field(ge=2, le=65536)] = 255
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.05
    n_estimators: Annotated[int, Field(ge=1, le=100_000)] = 1500
    early_stopping_rounds: Annotated[int, Field(ge=0, le=10_000)] = 50  # on the validation voxels; 0 = off
    min_data_in_leaf: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    feature_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    bagging_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    lambda_l2: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    max_bin: Annotated[int, Field(ge=4, le=1024)] = 255
    threads: Annotated[int, Field(ge=0, le=1024)] = 0  # 0: LightGBM's default (all cores)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def params(self) -> dict:
        return {"objective": {"l2": "regression", "l1": "regression_l1", "huber": "huber"}[self.objective],
                "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
                "lambda_l2": self.lambda_l2, "max_bin": self.max_bin, "seed": self.seed, "deterministic": True,
                "num_threads": self.threads, "verbosity": -1}


class BoostedDose:
    """LightGBM booster with the interface the dose task needs: fit, predict, text round trip.

    It may carry `members`: more boosters of the same features (the dose task's out-of-fold
    boosters) whose predictions are averaged with its own; a small ensemble that costs no extra
    training, since they are fitted for the DVH calibration anyway."""

    def __init__(self, config: BoostedDoseConfig = BoostedDoseConfig()):
        self.config = config
        self.booster = None
        self.members: list[BoostedDose] = []

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            feature_names: list[str] | None = None, progress: bool = False) -> dict:
        """Fit on (X, y); with validation voxels, stop when their error stops falling. Returns the
        number of trees kept and the validation MAE per round (for the training log)."""
        import lightgbm as lgb

        if X.shape[1] != self.config.n_features:
            raise RtgenError(f"{X.shape[1]} features given, the model is configured for {self.config.n_features}")
        train = lgb.Dataset(X, y, feature_name=feature_names or "auto", free_raw_data=True)
        sets, names, callbacks, history = [train], ["train"], [], {}
        if X_val is not None:
            sets.append(lgb.Dataset(X_val, y_val, reference=train))
            names.append("val")
            callbacks.append(lgb.record_evaluation(history))
            if self.config.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.config.early_stopping_rounds, verbose=False))
        bar = tqdm(total=self.config.n_estimators, desc="boosting", unit="tree", disable=not progress)

        def show(env) -> None:
            bar.update()
            bar.set_postfix({f"{n} L1": f"{v:.3f} Gy" for n, _, v, _ in env.evaluation_result_list})

        callbacks.append(show)
        try:
            self.booster = lgb.train({**self.config.params(), "metric": "l1"}, train,
                                     num_boost_round=self.config.n_estimators, valid_sets=sets, valid_names=names,
                                     callbacks=callbacks)
        finally:
            bar.close()
        best = self.booster.best_iteration or self.booster.current_iteration()
        return {"trees": int(best), "val_l1": [float(v) for v in history.get("val", {}).get("l1", [])]}

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The mean of this booster's and its members' predictions."""
        return self.predict_members(X).mean(axis=0).astype(np.float32)

    def predict_members(self, X: np.ndarray) -> np.ndarray:
        """(1 + members, voxels) in float64: this booster's prediction, then each member's."""
        if self.booster is None:
            raise RtgenError("the boosted model has not been fitted or loaded")
        best = self.booster.best_iteration or None
        out = np.empty((1 + len(self.members), len(X)), np.float64)
        out[0] = self.booster.predict(X, num_iteration=best, num_threads=self.config.threads)
        for i, member in enumerate(self.members):
            out[1 + i] = member.predict(X)
        return out

    def to_text(self) -> str:
        if self.booster is None:
            raise RtgenError("the boosted model has not been fitted")
        return self.booster.model_to_string(num_iteration=self.booster.best_iteration or None)

    def load_text(self, text: str, source: str = "model.txt") -> BoostedDose:
        import lightgbm as lgb

        try:
            self.booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as e:
            raise RtgenError(f"{source}: not a LightGBM text model ({str(e).splitlines()[0]})") from None
        if self.booster.num_feature() != self.config.n_features:
            raise RtgenError(f"{source}: the model uses {self.booster.num_feature()} features, its config.json says "
                             f"{self.config.n_features}")
        return self

    def parameters(self):
        """No tensors: `count_parameters` reads `n_parameters` instead."""
        return iter(())

    @property
    def n_parameters(self) -> int:
        """Leaves across all trees: the number of values the model stores."""
        if self.booster is None:
            return 0
        dump = self.booster.dump_model()
        return int(sum(t["num_leaves"] for t in dump["tree_info"])) + sum(m.n_parameters for m in self.members)


register_model("lightgbm_dose", config=BoostedDoseConfig, task="dose_boosted")(BoostedDose)
