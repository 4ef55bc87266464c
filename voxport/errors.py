"""Errors that the CLI turns into one clear line and an exit code.

Anything a user can cause (bad recipe, missing checkpoint, unknown architecture) is raised as a
`VoxportError` with a message that says what is wrong and what to do, so the CLI never shows a
traceback from deep inside torch.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class VoxportError(Exception):
    """A user-facing failure; `exit_code` 2 means bad input or usage."""

    exit_code = 2


class BadInput(VoxportError):
    """The input (checkpoint, recipe, text, path) is wrong; the message says how to fix it."""


class ParityFailed(VoxportError):
    """A parity threshold from the recipe was missed (exit code 1)."""

    exit_code = 1


#: what to do about a file system error, by errno; `{option}` is the command-line option that chose the
#: place (--out, --cache-dir, -o), so the hint names the flag the user can change
_OS_HINTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device writing {path}", "free space there or choose another {option}"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "free space there or choose another {option}"),
    errno.EFBIG: (
        "file too large writing {path} (a file size limit: `ulimit -f` or the file system's)",
        "raise the limit or choose another {option}",
    ),
    errno.EROFS: ("read-only file system: {path}", "choose a writable {option}"),
    errno.EACCES: ("permission denied: {path}", "fix its permissions or choose another {option}"),
    errno.EPERM: ("operation not permitted: {path}", "fix its permissions or choose another {option}"),
    errno.ENOTDIR: (
        "not a directory: {path} (a file is in the way)",
        "remove that file or choose another {option}",
    ),
    errno.EISDIR: (
        "{path} is a directory where a file was expected",
        "remove that directory or choose another {option}",
    ),
}


def explain_os_error(
    exc: OSError, places: Sequence[tuple[str | os.PathLike[str] | None, str]] = ()
) -> VoxportError:
    """One line for a file system failure (full disk, read-only mount, a file in the way), so the CLI
    says which path failed and what to do instead of printing a traceback from deep inside a writer.

    `places` are (directory, option) pairs for the locations the user chose on the command line (e.g.
    (out_dir, "--out")): the hint names the option whose directory holds the failing path.
    """
    # a failed copy names (source, destination); running out of room is the destination's fault
    writing = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and exc.filename2 is not None
    path = exc.filename2 if writing or exc.filename is None else exc.filename
    option = _option_for(path, places)
    shown = _shown(path) if path is not None else f"under {option}" if option else "a file"
    what, todo = _OS_HINTS.get(exc.errno or 0, (f"{(exc.strerror or str(exc)).lower()}: {{path}}", ""))
    message = what.format(path=shown)
    if todo:
        message += "; " + todo.format(option=option or "location")
    return VoxportError(message)


def _option_for(path: Any, places: Sequence[tuple[str | os.PathLike[str] | None, str]]) -> str | None:
    """The option whose directory is the deepest one holding `path`; the first place when the error
    named no path (a failed write() says only ENOSPC), none when the path lies elsewhere."""
    given = [(Path(d).absolute(), option) for d, option in places if d is not None]
    if not given:
        return None
    if path is None:
        return given[0][1]
    target = Path(os.fsdecode(path)).absolute()
    holding = [(len(d.parts), option) for d, option in given if target == d or d in target.parents]
    return max(holding)[1] if holding else None


def _shown(path: Any) -> str:
    """The path as the user would type it: relative to the working directory when it lies inside."""
    text = os.fsdecode(path)
    try:
        return str(Path(text).relative_to(Path.cwd()))
    except ValueError:
        return text
