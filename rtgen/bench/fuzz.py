"""Fuzzing of everything rtgen reads from a user: mutated OpenKBP CSVs (plain and gzip), NIfTI
volumes, .npz caches, whole patient folders, DICOM exports (CT series, RTSTRUCT, RTDOSE), YAML run
configs and checkpoints (config.json and safetensors weights).

The contract under test: a reader either loads the input or raises an `RtgenError` (`DataError`,
`ConfigError`, ...), which the CLI prints as one line. Any other exception is a crash: a
traceback a user would see. `run_fuzz` counts both and saves every crashing input for replay.

Seeds are built from the bundled patient pt_204 (small crops, so one read takes milliseconds) and
the shipped default checkpoint; mutations are byte-level (flips, splices, truncation, inserted
magic bytes) and, for text formats, token-level (a number replaced by NaN, 1e39, -1, 99999, abc,
an empty field; lines deleted or duplicated), applied to the decompressed text of gzip files too.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.errors import RtgenError

INTERESTING_TOKENS = ["nan", "NaN", "inf", "-inf", "1e39", "1e308", "-1", "-2.5", "0", "5", "99999", "-99999",
                      "abc", "", " ", "1.5", "3e9", "-0", "0x10", "1,2", "true", "null", "[]", "{}", "'", '"',
                      "\x00", "é", "9" * 40]
INTERESTING_BYTES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x80\x7f", b"\n", b",",
                     b"\x1f\x8b", b"PK\x03\x04", b"\x5c\x01\x00\x00"]


@dataclass
class Target:
    """One kind of input: how to lay it out in a folder and how rtgen reads it."""

    name: str
    files: dict[str, bytes]  # relative path -> content of the seed
    read: Callable[[Path], object]  # reads the folder's entry (see `entry`)
    entry: str = ""  # the path handed to `read`, relative to the folder ("" = the folder)
    text_files: tuple[str, ...] = ()  # files that are text (or gzip of text): token mutations apply


@dataclass
class FuzzReport:
    tried: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    crashes: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.tried.values())


# ---------------------------------------------------------------- seeds


def _csv(idx: np.ndarray, values: np.ndarray | None, fmt: str = "%.6g") -> str:
    rows = [f"{i}," + ("" if values is None else fmt % v) for i, v in
            zip(idx.tolist(), (values if values is not None else idx).tolist())]
    return ",data\n" + "\n".join(rows) + "\n"


def _nifti_bytes(arr: np.ndarray, gz: bool) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.diag([3.9, 3.9, 2.5, 1.0]))
    data = img.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def build_targets() -> list[Target]:
    """The seeds, from the bundled pt_204 and the shipped default checkpoint."""
    from rtgen.core.structures import CT_OFFSET
    from rtgen.data.examples import example_patients_dir
    from rtgen.data.records import Patient
    from rtgen.data.sources import load_patient
    from rtgen.data.sources.dicom import write_dicom_patient
    from rtgen.data.sources.nifti import read_nifti
    from rtgen.data.sources.npz import write_npz
    from rtgen.data.sources.openkbp import read_sparse_csv
    from rtgen.engine.config import load_config
    from rtgen.hub import default_model, shipped_model_dir
    from rtgen.inference import load_predictor

    p = load_patient(example_patients_dir() / "pt_204")
    inside = np.flatnonzero(p.structures["PTV70"].ravel())[:40]
    ct_vals = p.ct.ravel()[inside].astype(np.float64) + CT_OFFSET
    dose_vals = p.dose.ravel()[inside]
    dose_csv, ct_csv, mask_csv = _csv(inside, dose_vals), _csv(inside, ct_vals, "%.1f"), _csv(inside, None)

    crop = (slice(60, 68), slice(60, 67), slice(60, 66))
    small = Patient("pt_204", p.ct[crop], p.dose[crop], p.possible_dose_mask[crop],
                    {k: v[crop] for k, v in p.structures.items()}, p.spacing)
    with tempfile.TemporaryDirectory() as tmp:
        npz = write_npz(small, Path(tmp) / "pt_204.npz").read_bytes()
        dicom_dir = write_dicom_patient(small, Path(tmp) / "dicom")
        dicom = {str(f.relative_to(dicom_dir)): f.read_bytes() for f in sorted(Path(dicom_dir).rglob("*")) if f.is_file()}

    model = shipped_model_dir(default_model("dose_regression"))
    config_json = (model / "config.json").read_bytes()
    weights = (model / "model.safetensors").read_bytes()
    yaml_text = ("model: {name: mamba_unet_v2, channels: [8, 16, 16, 32], mixer_from_level: 2}\n"
                 "features: {dose_max_gy: 80.0, psdm_scale_mm: 100.0}\n"
                 "data: {train: split/train, val: split/val, max_train_patients: 2}\n"
                 "train: {epochs: 2, batch_size: 4, lr: 0.001, seed: 0}\n")

    def read_checkpoint(folder: Path):
        return load_predictor(folder, "cpu")

    return [
        Target("openkbp dose.csv", {"dose.csv": dose_csv.encode()}, lambda f: read_sparse_csv(f / "dose.csv", "dose"),
               text_files=("dose.csv",)),
        Target("openkbp ct.csv.gz", {"ct.csv.gz": gzip.compress(ct_csv.encode(), mtime=0)},
               lambda f: read_sparse_csv(f / "ct.csv.gz", "ct"), text_files=("ct.csv.gz",)),
        Target("openkbp mask csv", {"PTV70.csv": mask_csv.encode()}, lambda f: read_sparse_csv(f / "PTV70.csv", "mask"),
               text_files=("PTV70.csv",)),
        Target("openkbp patient folder", {
            "ct.csv": ct_csv.encode(), "dose.csv": dose_csv.encode(), "possible_dose_mask.csv": mask_csv.encode(),
            "PTV70.csv": mask_csv.encode(), "voxel_dimensions.csv": b"3.906\n3.906\n2.5\n"},
            load_patient, entry="", text_files=("ct.csv", "dose.csv", "possible_dose_mask.csv", "PTV70.csv",
                                                "voxel_dimensions.csv")),
        Target("nifti dose.nii.gz", {"dose.nii.gz": _nifti_bytes(small.dose, True)},
               lambda f: read_nifti(f / "dose.nii.gz", "dose")),
        Target("nifti ct.nii", {"ct.nii": _nifti_bytes(small.ct, False)}, lambda f: read_nifti(f / "ct.nii", "ct")),
        Target("nifti mask.nii.gz", {"mask.nii.gz": _nifti_bytes(small.possible_dose_mask.astype(np.uint8), True)},
               lambda f: read_nifti(f / "mask.nii.gz", "mask")),
        Target("npz cache", {"pt_204.npz": npz}, lambda f: load_patient(f / "pt_204.npz")),
        Target("dicom CT+RTSTRUCT+RTDOSE", dicom, load_patient),
        Target("yaml run config", {"run.yaml": yaml_text.encode()}, lambda f: load_config(f / "run.yaml"),
               text_files=("run.yaml",)),
        Target("checkpoint config.json", {"config.json": config_json, "model.safetensors": weights},
               read_checkpoint, text_files=("config.json",)),
        Target("checkpoint weights", {"config.json": config_json, "model.safetensors": weights}, read_checkpoint),
    ]


# ---------------------------------------------------------------- mutations


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    n = len(b)
    # safetensors and NIfTI keep their structure at the start: aim there half the time
    pos = int(rng.integers(0, max(1, min(n, 4096)))) if rng.random() < 0.5 else int(rng.integers(0, max(1, n)))
    op = int(rng.integers(0, 7))
    if n == 0 or op == 0:
        b[pos:pos] = INTERESTING_BYTES[int(rng.integers(len(INTERESTING_BYTES)))]
    elif op == 1:
        b[min(pos, n - 1)] ^= 1 << int(rng.integers(8))
    elif op == 2:
        b[min(pos, n - 1)] = int(rng.integers(256))
    elif op == 3:
        del b[pos: pos + int(rng.integers(1, 64))]
    elif op == 4:
        b = b[: int(rng.integers(0, n))]  # truncation, as a half-copied file
    elif op == 5:
        end = min(n, pos + int(rng.integers(1, 64)))
        b[pos:pos] = b[pos:end]
    else:
        word = INTERESTING_BYTES[int(rng.integers(len(INTERESTING_BYTES)))]
        b[pos: pos + len(word)] = word
    return bytes(b)


def _mutate_text(text: str, rng: np.random.Generator) -> str:
    lines = text.split("\n")
    op = int(rng.integers(0, 5))
    i = int(rng.integers(0, len(lines)))
    if op == 0:  # replace one token (a field, a number, a word)
        import re

        tokens = list(re.finditer(r"[^\s,:\[\]{}\"]+", lines[i]))
        if tokens:
            t = tokens[int(rng.integers(len(tokens)))]
            new = INTERESTING_TOKENS[int(rng.integers(len(INTERESTING_TOKENS)))]
            lines[i] = lines[i][: t.start()] + new + lines[i][t.end():]
    elif op == 1:
        del lines[i]
    elif op == 2:
        lines.insert(i, lines[int(rng.integers(0, len(lines)))])
    elif op == 3:
        lines[i] = lines[i].replace(",", rng.choice([";", "\t", ",,", ""]), 1)
    else:
        lines[i] = lines[i][: int(rng.integers(0, len(lines[i]) + 1))]
    return "\n".join(lines)


def mutate(name: str, data: bytes, is_text: bool, rng: np.random.Generator, rounds: int) -> bytes:
    """Apply `rounds` mutations. Most land inside the stream of a .gz file (else nearly every case
    would die at the CRC check); text files get token mutations as well as byte mutations."""
    for _ in range(rounds):
        inner = data
        gz = name.endswith(".gz") and rng.random() < 0.7
        if gz:
            try:
                inner = gzip.decompress(data)
            except (OSError, EOFError, ValueError, zlib.error):
                gz = False  # an earlier mutation broke the stream: mutate its bytes
        if is_text and (gz or not name.endswith(".gz")) and rng.random() < 0.7:
            inner = _mutate_text(inner.decode("utf-8", "replace"), rng).encode("utf-8", "surrogateescape")
        else:
            inner = _mutate_bytes(inner if gz or not name.endswith(".gz") else data, rng)
        data = gzip.compress(inner, mtime=0) if gz else inner
    return data


# ---------------------------------------------------------------- running


def try_input(target: Target, folder: Path, rng: np.random.Generator) -> tuple[str, Exception | None, dict]:
    """Write one mutated case of `target` into `folder` and read it: ("loaded" | "refused" | "crash", error, files)."""
    files = dict(target.files)
    name = list(files)[int(rng.integers(len(files)))]
    files[name] = mutate(name, files[name], name in target.text_files, rng, int(rng.integers(1, 4)))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target.read(folder / target.entry if target.entry else folder)
    except RtgenError as e:
        return "refused", e, files
    except Exception as e:  # noqa: BLE001 - anything else is the crash this fuzzer looks for
        return "crash", e, files
    return "loaded", None, files


def run_fuzz(seconds: float | None = None, iterations: int | None = None, seed: int = 0,
             crash_dir: Path | None = None, only: str | None = None,
             progress: Callable[[str], None] | None = None) -> FuzzReport:
    """Fuzz round-robin over the targets until `seconds` pass or `iterations` inputs were tried."""
    if seconds is None and iterations is None:
        raise ValueError("give seconds or iterations")
    targets = [t for t in build_targets() if only is None or only in t.name]
    rng = np.random.default_rng(seed)
    report = FuzzReport()
    t0 = time.perf_counter()
    last = t0
    with tempfile.TemporaryDirectory(prefix="rtgen-fuzz-") as tmp:
        k = 0
        while True:
            if iterations is not None and k >= iterations:
                break
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                break
            target = targets[k % len(targets)]
            outcome, error, files = try_input(target, Path(tmp) / "case", rng)
            report.tried[target.name] = report.tried.get(target.name, 0) + 1
            if outcome == "loaded":
                report.loaded[target.name] = report.loaded.get(target.name, 0) + 1
            elif outcome == "refused":
                report.refused[target.name] = report.refused.get(target.name, 0) + 1
            else:
                crash = {"target": target.name, "error": f"{type(error).__name__}: {error}"[:500]}
                if crash_dir is not None:
                    case = Path(crash_dir) / f"crash_{len(report.crashes):04d}"
                    case.mkdir(parents=True, exist_ok=True)
                    for rel, content in files.items():
                        (case / rel).parent.mkdir(parents=True, exist_ok=True)
                        (case / rel).write_bytes(content)
                    (case / "error.txt").write_text(crash["error"] + "\n")
                    crash["saved"] = str(case)
                report.crashes.append(crash)
            k += 1
            if progress is not None and time.perf_counter() - last > 30:
                last = time.perf_counter()
                progress(f"{report.total} inputs, {len(report.crashes)} crashes, {last - t0:.0f} s")
    report.seconds = time.perf_counter() - t0
    return report


def format_report(report: FuzzReport) -> str:
    buf = io.StringIO()
    buf.write(f"{'target':28s} {'tried':>8s} {'loaded':>8s} {'refused':>8s} {'crashes':>8s}\n")
    for name, n in report.tried.items():
        crashes = sum(c["target"] == name for c in report.crashes)
        buf.write(f"{name:28s} {n:8d} {report.loaded.get(name, 0):8d} {report.refused.get(name, 0):8d} {crashes:8d}\n")
    buf.write(f"{'total':28s} {report.total:8d} {sum(report.loaded.values()):8d} "
              f"{sum(report.refused.values()):8d} {len(report.crashes):8d}   in {report.seconds:.0f} s\n")
    for c in report.crashes[:20]:
        buf.write(f"crash in {c['target']}: {c['error']}" + (f" (saved in {c['saved']})" if "saved" in c else "") + "\n")
    return buf.getvalue()


def report_json(report: FuzzReport) -> str:
    return json.dumps({"tried": report.tried, "loaded": report.loaded, "refused": report.refused,
                       "crashes": report.crashes, "seconds": report.seconds, "total": report.total}, indent=2)
