"""Safe file output: atomic writes, the output-vs-input clash check, and sidecars that never clobber.

Guarantees every command relies on:

* an output appears complete under its final name or not at all (written to a hidden
  ``.NAME.*.part`` beside it, flushed, renamed); a write error (full disk, read-only target, a
  folder in the way) becomes one ``CloExportError`` naming the path and the cause, and no
  ``.part`` file is left;
* :func:`check_outputs` refuses, before any work, an output that is one of the command's inputs:
  by resolved path and by file identity (device, inode), so hard and symbolic links count;
* a sidecar (``<artifact>.json``: ``best.onnx.json``, ``best.engine.json``) carries the marker key
  ``clo_export_version``; :func:`write_sidecar` never replaces a file without it;
* :func:`output_target` decides by kind: a character device or FIFO (``/dev/null``, a pipe) is written
  directly, in order, with no temporary file and no sidecars; a symbolic link is kept and the file it
  points to is replaced atomically; anything else that is not a regular file is refused;
* JSON is strict (:func:`json_text`): NaN/Infinity become ``null`` and the object names them under
  ``non_finite``; the text never holds a bare ``NaN``;
* a ``.part`` file left by a killed process (its PID is in the name) is removed by the next write
  to the same target.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from clo_export import __version__
from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
SIDECAR_MARKER = "clo_export_version"  # a JSON object with this key was written by clo-export
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # annotated images keep these
# names an output folder's own files can take (annotated images, videos): another output there could be replaced
FOLDER_FILE_SUFFIXES = IMAGE_SUFFIXES + (".mp4", ".avi", ".mkv", ".mov")


def os_error_text(e: OSError) -> str:
    """'No space left on device' style cause of an OSError, with the usual fix."""
    cause = e.strerror or str(e) or type(e).__name__
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EROFS: "the filesystem is read-only; write elsewhere",
        errno.EACCES: "check the permissions",
        errno.EPERM: "check the permissions",
        errno.EISDIR: "a folder is in the way; choose a file name",
        errno.ENOTDIR: "a parent of the path is a file, not a folder",
        errno.EEXIST: "a parent of the path is a file, not a folder",
    }.get(e.errno or 0)
    return f"{cause}; {hint}" if hint else cause


def write_error(path: PathLike, e: OSError) -> CloExportError:
    """The one-line error for a failed write of ``path``."""
    return CloExportError(f"cannot write '{path}': {os_error_text(e)}")


NAME_MAX = 255  # bytes in one file name on the usual Linux filesystems (os.pathconf says so where it can)
_PART_STEM = 120  # bytes of the final name kept in a temporary name, so that it is never longer than NAME_MAX


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the filesystem of ``folder`` (or its nearest existing parent) takes."""
    for p in (folder, *folder.parents):
        if p.exists():
            try:
                return int(os.pathconf(p, "PC_NAME_MAX"))
            except (OSError, ValueError, AttributeError):
                return NAME_MAX
    return NAME_MAX


def check_name_length(label: str, path: PathLike, extra: int = 0) -> None:
    """Refuse, before any work, a path with a name the filesystem cannot hold (``extra``: bytes added to the last)."""
    path = Path(path)
    limit = _name_max(path.parent)
    for i, part in enumerate(path.parts):
        size = len(os.fsencode(part)) + (extra if i == len(path.parts) - 1 else 0)
        if size > limit:
            raise CloExportError(
                f"{label} '{path}': the name '{part[:40]}…' is {size} bytes, more than the "
                f"filesystem's {limit}; choose a shorter name"
            )


def _part_stem(name: str) -> str:
    """The final name as kept in a temporary name (cut so the temporary name always fits)."""
    raw = os.fsencode(name)
    return name if len(raw) <= _PART_STEM else os.fsdecode(raw[:_PART_STEM])


def part_name(path: PathLike, suffix: str = "") -> Path:
    """``.NAME.partPID<suffix>`` beside ``path``: hidden, names this process, keeps ``suffix`` (OpenCV picks the
    container from it); :func:`remove_stale_parts` removes it once this process is gone."""
    path = Path(path)
    return path.with_name(f".{_part_stem(path.stem if suffix else path.name)}.part{os.getpid()}{suffix}")


_PART = re.compile(r"^\.(?P<stem>.*)\.part(?P<pid>\d+)(?:\.[^.]*)?$")
_PARTS_SEEN: dict = {}  # folder -> temporary names found there the first time this process wrote into it


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (its temporary files may still be written)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_parts(path: PathLike) -> list:
    """Remove the temporary files (or staging folders) of ``path`` left by processes that no longer run (a SIGKILLed
    write); the paths removed."""
    path = Path(path)
    folder = os.path.abspath(path.parent)
    if folder not in _PARTS_SEEN:  # one look per folder and process: a folder of 10 000 images is listed once
        try:
            _PARTS_SEEN[folder] = [e.name for e in os.scandir(folder) if _PART.match(e.name)]
        except OSError:
            return []
    removed = []
    for p in [path.parent / n for n in _PARTS_SEEN[folder]]:
        m = _PART.match(p.name)
        ours = m and (
            m["stem"] == _part_stem(path.name) or (m["stem"] == _part_stem(path.stem) and p.suffix == path.suffix)
        )
        if ours and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
                _PARTS_SEEN[folder].remove(p.name)
    if removed:
        log.warning(
            "removed %d temporary file(s) of %s left by a stopped process: %s",
            len(removed),
            path,
            ", ".join(p.name for p in removed),
        )
    return removed


def output_target(label: str, path: PathLike) -> Tuple[str, Path]:
    """What writing ``path`` means: ('stream', path) for a character device or FIFO (written directly, in order),
    ('file', real path) for a regular or new file (a link is followed: its target is replaced, the link kept);
    anything else (a folder, a socket, a block device) is refused in one line."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return "file", real
    except OSError as e:
        raise CloExportError(f"{label} '{path}': {os_error_text(e)}") from e
    if stat.S_ISREG(mode):
        return "file", real
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream", path
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise CloExportError(
        f"{label} '{path}' is {kind}; give a file name (or a character device or pipe such as /dev/null)"
    )


def is_stream(path: PathLike) -> bool:
    """Whether ``path`` is a character device or FIFO (no temporary file, no rename, no sidecars beside it)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


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
    kind, real = output_target("output", path)
    if kind == "stream":
        try:
            yield path
        except OSError as e:
            raise write_error(path, e) from e
        return
    path = real
    remove_stale_parts(path)
    created: list = []
    try:
        created = make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{_part_stem(path.name)}.part{os.getpid()}.", dir=path.parent)
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
        raise CloExportError(
            f"'{path}' exists and was not written by clo-export (no '{SIDECAR_MARKER}' key); "
            "it is kept: move it away or write the model under another name with -o"
        )


def write_sidecar(path: PathLike, facts: Mapping[str, Any], named_by_user: bool = False) -> Path:
    """Write a sidecar JSON (marker key added) atomically; never over a file clo-export did not write,
    unless the user named that path explicitly (``--json report.json``)."""
    if not named_by_user:
        check_sidecar(path)
    payload = {SIDECAR_MARKER: __version__, **facts}
    write_text_atomic(path, json_text(payload, indent=2))
    return Path(path)


def _finite(value: Any, where: str, bad: dict) -> Any:
    """``value`` with every NaN/Infinity replaced by None (recorded in ``bad`` under its dotted path)."""
    if isinstance(value, float) and not math.isfinite(value):
        bad[where] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays
        return _finite(value.tolist(), where, bad)
    return value


def json_text(obj: Any, indent: Optional[int] = None) -> str:
    """Strict JSON of ``obj`` plus a newline (the one writer of reports and sidecars): a non-finite number becomes
    ``null`` and a top-level object lists it under ``non_finite`` ({dotted path: 'nan' | 'inf' | '-inf'})."""
    bad: dict = {}
    clean = _finite(obj, "", bad)
    if bad and isinstance(clean, dict):
        clean["non_finite"] = {**(clean.get("non_finite") or {}), **bad}
    return json.dumps(clean, indent=indent, allow_nan=False) + "\n"


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
    """Refuse an output whose path cannot be a file: a folder, socket or block device there, a name too long, or a
    file where a parent folder should be."""
    path = Path(path)
    if path.is_dir():
        raise CloExportError(f"{label} '{path}' is a folder; give a file name")
    kind, path = output_target(label, path)
    if kind == "stream":
        return
    check_name_length(label, path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CloExportError(f"{label} '{path}': '{parent}' is a file, not a folder; choose another path")
            if not os.access(
                parent, os.W_OK | os.X_OK
            ):  # read-only filesystem or no permission: say so before any work
                cause = "Read-only file system" if _read_only(parent) else "Permission denied"
                raise CloExportError(f"cannot write '{path}': {cause}; write elsewhere")
            break


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_outputs(
    inputs: Mapping[str, Union[PathLike, Iterable[PathLike], None]],
    outputs: Mapping[str, Optional[PathLike]],
    out_dirs: Mapping[str, Optional[PathLike]] = {},
) -> None:  # noqa: B006 (read only)
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
                raise CloExportError(
                    f"{label} '{out}' is the input {in_label} '{inp}'{how}; writing it would destroy "
                    "the input: choose another output path"
                )
            if inp.is_dir() and out.is_file() and _inside(out, inp):
                raise CloExportError(
                    f"{label} '{out}' is a file inside the input {in_label} '{inp}'; writing it would "
                    "destroy an input: choose another output path"
                )
    for i, (label, out) in enumerate(outs):
        for other_label, other in outs[i + 1 :]:
            if _same(out, other):
                raise CloExportError(
                    f"{label} '{out}' and {other_label} '{other}' are the same file; give them different paths"
                )
    for label, folder in dirs:
        if folder.exists() and not folder.is_dir():
            raise CloExportError(f"{label} '{folder}' is a file, not a folder; choose a folder path")
        check_name_length(label, folder)
        for out_label, out in outs:
            if out.suffix.lower() in FOLDER_FILE_SUFFIXES and _inside(out.parent, folder):
                raise CloExportError(
                    f"{out_label} '{out}' lies in {label} '{folder}' under a name annotated files can "
                    f"take; one output of a run would replace another: put {out_label} elsewhere"
                )
        for in_label, inp in ins:
            if inp.is_dir() and _inside(folder, inp):
                raise CloExportError(
                    f"{label} '{folder}' lies inside the input {in_label} '{inp}'; annotated files would "
                    "mix with (or replace) the inputs: choose a folder outside it"
                )
            if not inp.is_dir() and _identity(folder) is not None and _identity(inp.parent) == _identity(folder):
                raise CloExportError(
                    f"{label} '{folder}' holds the input {in_label} '{inp}'; annotated files would "
                    "replace the inputs: choose another folder"
                )


def check_artifact(
    inputs: Mapping[str, Union[PathLike, Iterable[PathLike], None]],
    out: PathLike,
    extra: Mapping[str, Optional[PathLike]] = {},
) -> None:  # noqa: B006 (read only)
    """The pre-work check of a command writing ``out`` and its sidecar (plus ``extra`` outputs)."""
    if is_stream(out):  # a device or pipe gets the artifact only: no sidecars beside it
        check_outputs(inputs, {"-o": out, **extra})
        return
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
