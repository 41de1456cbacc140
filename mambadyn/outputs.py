"""Where commands write: result folders that land all at once and never take anything they did not write.

Every folder a command writes carries a manifest (``MANIFEST``) naming the command and the files it wrote.
A command writes into ``--out`` only when that path is absent, an empty folder, or a folder whose
manifest says the same command wrote it and which holds nothing else. A file, a folder of someone's files,
or another command's output is refused with one line, before any work is done and again before the swap.

``atomic_folder`` builds the new output in a temporary folder beside ``out`` and swaps it in when the
block ends: an interrupted or failed command leaves the old folder whole, never half of a new one, and
leaves behind no folder it created. ``claim_folder`` marks a folder that a resumable command (the
experiments) fills step by step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

MANIFEST = ".mambadyn-output.json"


def _listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _manifest(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("command"), str) else None


def check_output(out: str | Path, command: str, incremental: bool = False) -> Path:
    """Raise ``OutputError`` unless ``command`` may write the folder ``out``: it is absent, an empty folder,
    or a previous output of ``command`` holding only the files its manifest lists (``incremental``: any
    files, since a resumable command adds them as it goes). Returns ``out`` as a Path."""
    out = Path(out)
    if not out.exists():
        if out.is_symlink():
            raise OutputError(f"--out {out} is a broken symbolic link: give a folder path")
        return out
    if not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder: give a new or empty folder")
    found = _listing(out)
    if not found and not any(out.iterdir()):
        return out
    m = _manifest(out)
    if m is None:
        some = ", ".join(sorted(found)[:3]) or ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise OutputError(f"--out {out} holds files mambadyn did not write ({some}, ...): give a new or empty "
                          "folder (nothing was changed)")
    if m["command"] != command:
        raise OutputError(f"--out {out} holds the output of `mambadyn {m['command']}`, not of `mambadyn {command}`: "
                          "give another folder (nothing was changed)")
    if not incremental:
        extra = sorted(found - set(m.get("files") or []) - {MANIFEST})  # None: a resumable command's folder
        if extra:
            raise OutputError(f"--out {out} is an earlier `mambadyn {command}` output, but it now also holds "
                              f"files it did not write ({', '.join(extra[:3])}): move them or give another folder "
                              "(nothing was changed)")
    return out


def _write_manifest(folder: Path, command: str, files: list[str] | None) -> None:
    (folder / MANIFEST).write_text(json.dumps({"command": command, "files": files}, indent=1) + "\n")


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parents; returns those created, deepest first (to undo on failure)."""
    made = []
    p = path.parent
    while not p.exists():
        made.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder for --out {path}: {e.strerror or e}") from None
    return made


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_folder(out: str | Path, command: str) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; when the block ends without an error, it replaces ``out``
    (after ``check_output`` allows it) with a manifest of what ``command`` wrote. On an error or an
    interrupt nothing changes, and no folder this call created is left behind."""
    out = check_output(out, command)
    made = _make_parents(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        _remove_empty(made)
        raise OutputError(f"cannot write --out {out}: {e.strerror or e} in {out.parent}") from None
    done = False
    try:
        yield tmp
        _write_manifest(tmp, command, sorted(_listing(tmp)))
        check_output(out, command)  # again: someone may have written there while we worked
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "out")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(made)


def claim_folder(out: str | Path, command: str) -> Path:
    """Make ``out`` the output folder of a resumable ``command`` (one that writes as it goes and reuses what
    an earlier run of it left): refuses what ``check_output`` refuses, then marks the folder."""
    out = check_output(out, command, incremental=True)
    _make_parents(out)
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out {out}: {e.strerror or e}") from None
    if _manifest(out) is None:
        _write_manifest(out, command, None)
    return out


def write_file(path: str | Path, text: str, command: str) -> Path:
    """Write the single-file output ``path`` atomically. An existing file is replaced only when its first
    line is the marker ``command`` writes (``file_marker``); anything else at ``path`` is refused."""
    path = Path(path)
    marker = file_marker(command)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder: give a file path (e.g. {path / 'report.md'})")
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline().rstrip("\n")
        if first != marker:
            raise OutputError(f"--out {path} exists and was not written by `mambadyn {command}`: give another path "
                              "(nothing was changed)")
    made = _make_parents(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(f"{marker}\n{text}", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        _remove_empty(made)
        raise OutputError(f"cannot write --out {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def file_marker(command: str) -> str:
    """The first line of a single-file output of ``command`` (a markdown comment, invisible when rendered)."""
    return f"<!-- written by mambadyn {command}; rerunning it replaces this file -->"
