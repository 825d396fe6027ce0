"""Write outputs so that a failure never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _suffixes(path: Path) -> str:
    # keep multi-part suffixes (.nii.gz, .csv.gz) so format-sniffing writers still work
    return "".join(path.suffixes[-2:]) if len(path.suffixes) > 1 else path.suffix


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + _suffixes(dest), dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its entries into `dest`, on failure remove it.

    `dest` is created only on success, so a failing command leaves no partial output.
    Existing files in `dest` with the same names are replaced.
    """
    dest = Path(dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stage-", dir=parent))
    try:
        yield stage
        dest.mkdir(parents=True, exist_ok=True)
        for entry in sorted(stage.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
