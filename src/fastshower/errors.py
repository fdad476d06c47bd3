"""The few expected failures of fastshower, and how the command line reports them.

Library code raises these for problems the user can fix (a bad option, a corrupt or tampered file, an
output that already exists, a full disk); ``fastshower`` prints them as ``error: <message>`` (a few
lines at most) and exits with :attr:`FastshowerError.exit_code`. Every other exception is a defect
and keeps its traceback (:func:`user_message` returns None for it).

Transitional rule: a plain ``ValueError`` / ``RuntimeError`` / ``FileNotFoundError`` raised by a
``raise`` statement in fastshower's own source (a deliberate message, e.g. in modules not yet
converted to these classes) is reported like a :class:`UserInputError`; the same exception types
raised inside numpy, torch, h5py... keep their traceback.
"""

from __future__ import annotations

import errno
import linecache
from pathlib import Path

#: Lines of detail kept from pydantic / torch messages (item lists), beyond the first line.
MAX_DETAIL_LINES = 4
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
#: OSError numbers that describe the user's environment, not a defect: reported in one line.
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
               errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EFBIG}


class FastshowerError(Exception):
    """An expected failure; its message is for the user. ``exit_code``: the command's exit status."""

    exit_code = 2


class UserInputError(FastshowerError, ValueError):
    """A bad option, configuration value or condition (also a ValueError, for older callers)."""


class DataFileError(FastshowerError, ValueError):
    """An input file that cannot be used: truncated, not the expected format, wrong tensors."""


class ChecksumError(DataFileError):
    """A weights file whose sha256 does not match its model card (changed after saving)."""


class OutputExistsError(UserInputError):
    """The output exists and ``--overwrite`` was not given."""


class ConcurrentWriterError(FastshowerError):
    """Another live process writes the same output (or run folder)."""


class DiskFullError(FastshowerError):
    """Writing failed for lack of space (ENOSPC / EDQUOT / EFBIG); the partial file was removed."""


class TargetNotMetError(FastshowerError):
    """An accuracy target that no candidate met (nothing written)."""


class AllTrialsFailedError(FastshowerError):
    """Every trial of a search failed: the reason of the first one is in the message."""

    exit_code = 1


def brief(text: str, max_lines: int = MAX_DETAIL_LINES) -> str:
    """The first line of ``text`` and at most ``max_lines`` further non-empty lines, each shortened
    to 200 characters, with ``(N more lines)`` when cut."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    kept = [line if len(line) <= 200 else line[:197] + "..." for line in lines[:1 + max_lines]]
    if len(lines) > len(kept):
        kept.append(f"({len(lines) - len(kept)} more lines)")
    return "\n  ".join(kept)


def validation_details(exc, source: str | None = None, max_errors: int = MAX_DETAIL_LINES) -> str:
    """A pydantic ``ValidationError`` as ``[source: ]N errors for Model: loc: message; ...`` (which
    field, why), the first ``max_errors`` errors."""
    errors = exc.errors()
    parts = []
    for err in errors[:max_errors]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(value)"
        msg = "unknown key" if err.get("type") == "extra_forbidden" else err.get("msg", "")
        parts.append(f"{loc}: {msg}")
    more = f"; and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
    head = f"{source}: " if source else ""
    n = len(errors)
    return f"{head}{n} invalid value{'s' if n != 1 else ''} for {exc.title}: {'; '.join(parts)}{more}"


def _raised_here(exc: BaseException) -> bool:
    """True when ``exc`` was raised by a ``raise`` statement in fastshower's own source."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def user_message(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an expected failure; None for a defect (keep the traceback)."""
    if isinstance(exc, FastshowerError):
        return brief(str(exc)) or type(exc).__name__, exc.exit_code
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return validation_details(exc), 2
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        text = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"disk full while writing{where} ({brief(str(exc), 0)})", 2
        return f"{text}{where}", 2
    if isinstance(exc, (ValueError, RuntimeError, FileNotFoundError)) and _raised_here(exc):
        msg = str(exc.args[0]) if exc.args else ""
        return (msg.splitlines()[0] if msg.strip() else type(exc).__name__), 2
    return None
