"""DiffKT3D ablations on the validation split: steps, best-of-N and stages, one table.

For each run folder (or shipped model, e.g. hub:diffkt3d_openkbp) and each (steps, best_of)
setting, every validation patient's dose is sampled from its cached condition latents (the same
`DiffKT3DTask.generate` that `rtgen predict` uses; the prior slot read from --prior, the CSV
predictions of the shipped lightgbm_dose, which is what `rtgen predict` computes on the fly) and
scored: OpenKBP dose and DVH scores, mean scorecard
fraction and reward (eq. 9's weighted scorecard), GDP-HMM MAE, and seconds per patient for
sampling + decoding + scorecard selection (the prior and the encoding of the conditions, paid once
per patient whatever the setting, are timed by `rtgen predict` and reported beside the table).

    python benchmarks/diffkt3d_ablation.py --val data/openkbp/validation-pats --prior PRIORS \
        --run runs/diffkt3d_cpu_dose --run runs/diffkt3d_cpu_nft --setting 8x2 --setting 8x1 --setting 4x2 \
        --out ablation.json
    python benchmarks/diffkt3d_ablation.py --smoke

PRIORS is a folder of pt_N.csv predictions of the validation patients
(`rtgen predict --model hub:lightgbm_dose_openkbp --patients VAL --out PRIORS`).

With more than one row, or `--baseline` (an earlier --out file), each row is compared patient by
patient with the first (or the baseline's first): the changes of the eq. 9 scorecard, the share
of points and the dose error, each with a Wilcoxon signed-rank test.
`--smoke` samples the shipped dose and nft stages on one bundled patient (1 step, best of 1), with
the reference dose blurred as a stand-in prior and a temporary latent cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common

from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.inference import resolve_model
from rtgen.tasks import task_from_checkpoint
from rtgen.tasks.diffkt3d import KT3DSamplingConfig


def evaluate(run: Path, val: str, prior: str, settings: list[tuple[int, int]], limit: int | None,
             cache: Path | None = None) -> list[dict]:
    weights, config_path = resolve_checkpoint(resolve_model(run))
    task = task_from_checkpoint(read_config(config_path), str(config_path))
    if cache is not None:
        task.data.cache = str(cache)
    model = task.load_model(weights).eval()
    cases = [task.cached_case(p, prior) for p in task.split_paths(val, limit, "val")]
    rows = []
    for steps, best_of in settings:
        sampling = KT3DSamplingConfig(task.sampling.method, steps, best_of, 0)
        row = {"run": str(run), "stage": task.any2any.stage, "steps": steps, "best_of": best_of,
               "patients": len(cases), **task.score_cases(model, cases, sampling, per_patient=True)}
        print(json.dumps({k: v for k, v in row.items() if k != "per_patient"}), flush=True)
        rows.append(row)
    return rows


def paired(base: dict, others: list[dict]) -> str:
    """Each row against the first, patient by patient: for the eq. 9 scorecard (the reward), the share
    of points and the dose error, the mean change, how many patients went up and down, and the
    Wilcoxon signed-rank p-value (`rtgen.dosimetry.compare_paired`)."""
    from rtgen.dosimetry import compare_paired

    lines = []
    for row in others:
        ids = sorted(set(base["per_patient"]) & set(row["per_patient"]))
        if len(ids) < 2:
            lines.append(f"{row['run']} {row['steps']}x{row['best_of']}: {len(ids)} patient in common, no paired test")
            continue
        parts = []
        for key, scale, unit in (("reward", 100, " points"), ("scorecard", 100, " points"), ("dose_error", 1, " Gy")):
            after = [row["per_patient"][i][key] for i in ids]
            before = [base["per_patient"][i][key] for i in ids]
            c = compare_paired(after, before)
            up = sum(a > b for a, b in zip(after, before))
            down = sum(a < b for a, b in zip(after, before))
            parts.append(f"{key} {scale * c.mean_difference:+.3f}{unit} (higher for {up} of {c.n}, lower for {down}; "
                         f"Wilcoxon p = {c.wilcoxon_pvalue:.4f})")
        lines.append(f"{row['run']} {row['steps']}x{row['best_of']} against {base['run']}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", help="run folder or hub:NAME (repeatable)")
    ap.add_argument("--val")
    ap.add_argument("--prior", default="", help="folder of pt_N.csv dose priors of the validation patients")
    ap.add_argument("--setting", action="append", default=None, help="STEPSxBEST_OF, e.g. 8x2 (repeatable)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an earlier --out file: the rows are compared patient by patient with its first row")
    ap.add_argument("--cache", type=Path, default=None, help="latent cache folder (default: each run's data.cache)")
    ap.add_argument("--smoke", action="store_true", help="seconds: the shipped stages on one bundled patient")
    args = ap.parse_args(argv)
    if args.smoke:
        work = common.smoke_dir("diffkt3d-ablation")
        args.run = args.run or ["hub:diffkt3d_openkbp", "hub:diffkt3d_openkbp_nft"]
        args.val = args.val or str(common.bundled_openkbp())
        args.prior = args.prior or str(common.blurred_doses(Path(args.val), work / "priors"))
        args.setting, args.limit, args.cache, args.out = ["1x1"], 1, work / "cache", work / "ablation.json"
    if not args.run or not args.val:
        ap.error("--run and --val are required (or --smoke)")
    with common.torch_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    from rtgen.bench.ssm import machine_description

    settings = [tuple(int(v) for v in s.split("x")) for s in (args.setting or ["8x2"])]
    rows = [r for run in args.run for r in evaluate(run, args.val, args.prior, settings, args.limit, args.cache)]
    if args.out:  # with each patient's scores, for paired comparisons
        args.out.write_text(json.dumps({"machine": machine_description("cpu"), "rows": rows}, indent=1))
    base = json.loads(args.baseline.read_text())["rows"][0] if args.baseline else None
    if base or len(rows) > 1:
        print(paired(base, rows) if base else paired(rows[0], rows[1:]))


if __name__ == "__main__":
    main()
