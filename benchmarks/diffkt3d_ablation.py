"""DiffKT3D ablations on the validation split: steps, best-of-N and stages, one table.

For each run folder and each (steps, best_of) setting, every validation patient's dose is sampled
from its cached condition latents (the same `DiffKT3DTask.generate` that `rtgen predict` uses; the
prior slot read from --prior, the CSV predictions of the shipped lightgbm_dose, which is what
`rtgen predict` computes on the fly) and scored: OpenKBP dose and DVH scores, mean scorecard
fraction and reward (eq. 9's weighted scorecard), GDP-HMM MAE, and seconds per patient for
sampling + decoding + scorecard selection (the prior and the encoding of the conditions, paid once
per patient whatever the setting, are timed by `rtgen predict` and reported beside the table).

    python benchmarks/diffkt3d_ablation.py --val data/openkbp/validation-pats --prior PRIORS \
        --run runs/diffkt3d_b --run runs/diffkt3d_c --setting 8x2 --setting 8x1 --setting 4x2 \
        --out ablation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.tasks import task_from_checkpoint
from rtgen.tasks.diffkt3d import KT3DSamplingConfig


def evaluate(run: Path, val: str, prior: str, settings: list[tuple[int, int]], limit: int | None) -> list[dict]:
    weights, config_path = resolve_checkpoint(run)
    task = task_from_checkpoint(read_config(config_path), str(config_path))
    model = task.load_model(weights).eval()
    cases = [task.cached_case(p, prior) for p in task.split_paths(val, limit, "val")]
    rows = []
    for steps, best_of in settings:
        sampling = KT3DSamplingConfig(task.sampling.method, steps, best_of, 0)
        row = {"run": str(run), "stage": task.any2any.stage, "steps": steps, "best_of": best_of,
               "patients": len(cases), **task.score_cases(model, cases, sampling)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, type=Path)
    ap.add_argument("--val", required=True)
    ap.add_argument("--prior", default="", help="folder of pt_N.csv dose priors of the validation patients")
    ap.add_argument("--setting", action="append", default=None, help="STEPSxBEST_OF, e.g. 8x2 (repeatable)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [tuple(int(v) for v in s.split("x")) for s in (args.setting or ["8x2"])]
    rows = [r for run in args.run for r in evaluate(run, args.val, args.prior, settings, args.limit)]
    if args.out:
        args.out.write_text(json.dumps({"machine": "see README", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
