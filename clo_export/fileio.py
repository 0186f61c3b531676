"""Safe file output: atomic writes, the output-vs-input clash check, and sidecars that never clobber.

Guarantees every command relies on:

* an output appears complete under its final name or not at all (written to a hidden
  ``.NAME.*.part`` beside it, flushed, renamed); a write error (full disk, read-only target, a
  folder in the way) becomes one ``CloExportError`` naming the path and the cause, and no
  ``.part`` file is left;
* :func:`check_outputs` refuses, before any work, an output that is one of the command's inputs:
  by resolved path and by file identity (device, inode), so hard and symbolic links count;
* a sidecar (``<artifact>.json``: ``best.onnx.json``, ``best.engine.json``) carries the marker key
  ``clo_export_version``; :func:`write_sidecar` never replaces a file without it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from clo_export import __version__
from clo_export.errors import CloExportError

PathLike = Union[str, "os.PathLike[str]"]
SIDECAR_MARKER = "clo_export_version"  # a JSON object with this key was written by clo-export


def os_error_text(e: OSError) -> str:
    """'No space left on device' style cause of an OSError, with the usual fix."""
    cause = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "the filesystem is read-only; write elsewhere", errno.EACCES: "check the permissions",
            errno.EPERM: "check the permissions", errno.EISDIR: "a folder is in the way; choose a file name",
            errno.ENOTDIR: "a parent of the path is a file, not a folder",
            errno.EEXIST: "a parent of the path is a file, not a folder"}.get(e.errno or 0)
    return f"{cause}; {hint}" if hint else cause


def write_error(path: PathLike, e: OSError) -> CloExportError:
    """The one-line error for a failed write of ``path``."""
    return CloExportError(f"cannot write '{path}': {os_error_text(e)}")


def _cleanup_part(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def make_dirs(folder: PathLike) -> list:
    """``mkdir -p`` that returns the folders it created (deepest last), for :func:`remove_dirs` on failure."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_dirs(created: list) -> None:
    """Remove folders made by :func:`make_dirs` that are still empty (a failed write leaves nothing behind)."""
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file is flushed to disk before the rename. Any OSError (full disk, read-only
    folder, a directory at ``path``) becomes a CloExportError naming ``path``; the temporary
    file is removed whatever happens (also on KeyboardInterrupt/SIGTERM).
    """
    path = Path(path)
    if path.is_dir():
        raise CloExportError(f"cannot write '{path}': it is a folder; choose a file name")
    created: list = []
    try:
        created = make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        remove_dirs(created)
        raise write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    done = False
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)  # mkstemp makes it owner-only; outputs get the usual permissions
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        done = True
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        _cleanup_part(tmp_path)
        if not done:
            remove_dirs(created)


def _fsync(path: Path) -> None:
    """Flush a finished file to disk, so a delayed write error (quota, NFS) surfaces before the rename."""
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sidecar_path(artifact: PathLike) -> Path:
    """The one sidecar naming rule: best.onnx -> best.onnx.json, best.engine -> best.engine.json."""
    return Path(f"{os.fspath(artifact)}.json")


def is_ours(path: PathLike) -> bool:
    """Whether ``path`` is missing or a JSON object carrying the clo-export marker key."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_file() or path.stat().st_size > 64 << 20:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (SIDECAR_MARKER in data or str(data.get("format", "")).startswith("clo-export"))


def check_sidecar(path: PathLike) -> None:
    """Refuse to replace a file at a sidecar's path that clo-export did not write."""
    if not is_ours(path):
        raise CloExportError(f"'{path}' exists and was not written by clo-export (no '{SIDECAR_MARKER}' key); "
                             "it is kept: move it away or write the model under another name with -o")


def write_sidecar(path: PathLike, facts: Mapping[str, Any], named_by_user: bool = False) -> Path:
    """Write a sidecar JSON (marker key added) atomically; never over a file clo-export did not write,
    unless the user named that path explicitly (``--json report.json``)."""
    if not named_by_user:
        check_sidecar(path)
    payload = {SIDECAR_MARKER: __version__, **facts}
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return Path(path)


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    """(device, inode) of the file ``path`` finally names (links followed), None when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: same resolved path, or same (device, inode)."""
    if a.resolve() == b.resolve():
        return True
    ia = _identity(a)
    return ia is not None and ia == _identity(b)


def _inside(child: Path, folder: Path) -> bool:
    """Whether ``child`` lies in ``folder`` (at any depth, resolved), or is it."""
    folder_id = _identity(folder)
    probe = child.resolve()
    for p in (probe, *probe.parents):
        if p == folder.resolve() or (folder_id is not None and _identity(p) == folder_id):
            return True
    return False


def check_output_path(label: str, path: PathLike) -> None:
    """Refuse an output whose path cannot be a file: a folder there, or a file where a parent folder should be."""
    path = Path(path)
    if path.is_dir():
        raise CloExportError(f"{label} '{path}' is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CloExportError(f"{label} '{path}': '{parent}' is a file, not a folder; choose another path")
            if not os.access(parent, os.W_OK | os.X_OK):  # read-only filesystem or no permission: say so before any work
                cause = "Read-only file system" if _read_only(parent) else "Permission denied"
                raise CloExportError(f"cannot write '{path}': {cause}; write elsewhere")
            break


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_outputs(inputs: Mapping[str, Union[PathLike, Iterable[PathLike], None]],
                  outputs: Mapping[str, Optional[PathLike]],
                  out_dirs: Mapping[str, Optional[PathLike]] = {}) -> None:  # noqa: B006 (read only)
    """Refuse, before any work, an output that would replace or sit among a command's inputs.

    ``inputs`` maps an option label to a path or a list of paths (files or folders; missing ones
    are compared by resolved path). ``outputs`` maps labels to the files a command will write,
    ``out_dirs`` to the folders it will fill. A clash is an output file that is an input file
    (same resolved path or same file through a hard or symbolic link), two outputs that are the
    same file, an existing file inside an input folder, or an output folder that holds an input file or
    lies inside an input folder.
    """
    ins: list[tuple[str, Path]] = []
    for label, value in inputs.items():
        if value is None:
            continue
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        ins += [(label, Path(v)) for v in items]
    outs = [(label, Path(p)) for label, p in outputs.items() if p is not None]
    dirs = [(label, Path(p)) for label, p in out_dirs.items() if p is not None]
    for label, out in outs:
        check_output_path(label, out)
        for in_label, inp in ins:
            if _same(out, inp):
                how = "" if out.absolute() == inp.absolute() else " (through a link)"
                raise CloExportError(f"{label} '{out}' is the input {in_label} '{inp}'{how}; writing it would destroy "
                                     "the input: choose another output path")
            if inp.is_dir() and out.is_file() and _inside(out, inp):
                raise CloExportError(f"{label} '{out}' is a file inside the input {in_label} '{inp}'; writing it would "
                                     "destroy an input: choose another output path")
    for i, (label, out) in enumerate(outs):
        for other_label, other in outs[i + 1:]:
            if _same(out, other):
                raise CloExportError(f"{label} '{out}' and {other_label} '{other}' are the same file; give them different paths")
    for label, folder in dirs:
        if folder.exists() and not folder.is_dir():
            raise CloExportError(f"{label} '{folder}' is a file, not a folder; choose a folder path")
        for in_label, inp in ins:
            if inp.is_dir() and _inside(folder, inp):
                raise CloExportError(f"{label} '{folder}' lies inside the input {in_label} '{inp}'; annotated files would "
                                     "mix with (or replace) the inputs: choose a folder outside it")
            if not inp.is_dir() and _identity(folder) is not None and _identity(inp.parent) == _identity(folder):
                raise CloExportError(f"{label} '{folder}' holds the input {in_label} '{inp}'; annotated files would "
                                     "replace the inputs: choose another folder")


def check_artifact(inputs: Mapping[str, Union[PathLike, Iterable[PathLike], None]], out: PathLike,
                   extra: Mapping[str, Optional[PathLike]] = {}) -> None:  # noqa: B006 (read only)
    """The pre-work check of a command writing ``out`` and its sidecar (plus ``extra`` outputs)."""
    side = sidecar_path(out)
    check_outputs(inputs, {"-o": out, "sidecar": side, **extra})
    check_sidecar(side)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
