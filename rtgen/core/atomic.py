"""Write outputs so that a failure never leaves a half-written file or folder behind, and find out
that an output folder cannot be written before any compute, not after it.

Every disk error (a folder under a file, a read-only mount, a full disk, an I/O error) becomes one
`OutputError` naming the path, so the CLI prints one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rtgen.core.errors import OutputError

DISK_MARGIN = 1.2
"""Estimates of output sizes are rough; ask for 20% more free space than they say."""


def _suffixes(path: Path) -> str:
    # keep multi-part suffixes (.nii.gz, .csv.gz) so format-sniffing writers still work
    return "".join(path.suffixes[-2:]) if len(path.suffixes) > 1 else path.suffix


def disk_error(path: str | Path, e: OSError) -> OutputError:
    """One line for an OSError met while writing `path`."""
    reason = {
        errno.ENOSPC: "no space left on the device (disk full)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EIO: "input/output error on the device",
        errno.ENOTDIR: "a parent of this path is a file, not a folder",
        errno.EEXIST: "a file is in the way of this folder",
    }.get(e.errno, e.strerror or str(e))
    return OutputError(path, f"cannot be written: {reason}")


def make_dirs(path: Path) -> list[Path]:
    """Create `path` and missing parents; return those created (outermost first), naming the culprit
    when a parent is a file."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        if p.is_symlink():  # a dangling link
            raise OutputError(p, "cannot be written: a broken symbolic link is in the way")
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise OutputError(path, f"cannot be written: {p} is a file, not a folder")
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise OutputError(path, f"cannot be written: {d} is a file, not a folder") from None
            continue
        except OSError as e:
            raise disk_error(d, e) from None
        created.append(d)
    return created


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds.

    A disk error while writing (full disk, read-only mount) is one `OutputError` naming `dest`, and
    the temporary file is removed: `dest` is either the complete new file or untouched."""
    dest = Path(dest)
    make_dirs(dest.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + _suffixes(dest), dir=dest.parent)
    except OSError as e:
        raise disk_error(dest, e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, dest)
    except OSError as e:
        raise disk_error(dest, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success move its entries into `dest`, on failure remove it.

    `dest` gets new entries only on success, so a failing command leaves no partial output.
    Existing files in `dest` with the same names are replaced.
    """
    dest = Path(dest)
    parent = dest.parent
    make_dirs(parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stage-", dir=parent))
    except OSError as e:
        raise disk_error(dest, e) from None
    try:
        yield stage
        try:
            make_dirs(dest)
            for entry in sorted(stage.iterdir()):
                target = dest / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
        except OSError as e:
            raise disk_error(dest, e) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_writable(folder: Path, needed_bytes: int = 0) -> None:
    """Prove `folder` takes a file (write, flush to disk, remove) and has room for `needed_bytes`."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".rtgen-write-test-", dir=folder)
        try:
            os.write(fd, b"rtgen" * 820)  # 4 KiB: one block, so a full disk fails here
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise disk_error(folder, e) from None
    free = shutil.disk_usage(folder).free
    if needed_bytes * DISK_MARGIN > free:
        raise OutputError(folder, f"cannot be written: the outputs need about {_mb(needed_bytes * DISK_MARGIN)}, "
                                f"{_mb(free)} is free")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def check_can_create(path: str | Path, needed_bytes: int = 0) -> None:
    """Prove that folder `path` could be created and filled, without creating it: its nearest
    existing ancestor must be a writable folder with room (used before a long training run, whose
    folder appears only when the run starts writing)."""
    path = Path(path)
    p = _folder_path(path)
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise OutputError(path, f"cannot be written: {p} is a file, not a folder")
    check_writable(p, needed_bytes)


def _folder_path(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise OutputError(path, "cannot be written: it is a file, and an output folder was expected")
    return path


def prepare_output_dir(path: str | Path, needed_bytes: int = 0) -> Path:
    """Create `path` and prove it writable with room for `needed_bytes` (for commands whose outputs
    are all written atomically one by one, so nothing needs removing on failure)."""
    path = Path(path)
    make_dirs(_folder_path(path))
    check_writable(path, needed_bytes)
    return path


@contextlib.contextmanager
def output_dir(path: str | Path, needed_bytes: int = 0) -> Iterator[Path]:
    """Create `path` and prove it writable with room for `needed_bytes` before any compute.

    A path under a file, a read-only mount or a full disk fails here, in a second, not after the
    model has run. If the block fails, the folders this created are removed again when empty, so
    a failing command leaves nothing behind."""
    path = Path(path)
    created = make_dirs(_folder_path(path))
    try:
        check_writable(path, needed_bytes)
        yield path
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        raise
