"""Safe output files: atomic, locked against concurrent writers, never silently replaced.

- :func:`atomic_path` yields a hidden temporary path beside the output (``.NAME.<pid>.<random>.tmp``)
  and renames it onto the output only when the block succeeds; on any failure (exception, Ctrl-C,
  full disk) the temporary file is removed and the output, if any, is untouched.
- With ``overwrite=False`` an existing output is refused (:class:`~fastshower.errors.OutputExistsError`).
- With ``lock=True`` an exclusive ``fcntl.flock`` on ``.NAME.lock`` beside the output is held for the
  whole write: a second process writing the same output fails at once
  (:class:`~fastshower.errors.ConcurrentWriterError`) instead of both "succeeding" and one result
  being lost. The lock dies with its process (killed runs leave no stale lock).
- Temporary files left by killed runs are removed by the next write to the same output when the
  pid in their name is not a live process (:func:`clean_stale_temps`); names without a pid (older
  versions) are reported with a warning.
- Writing failures for lack of space become :class:`~fastshower.errors.DiskFullError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from fastshower.errors import ConcurrentWriterError, DiskFullError, OutputExistsError

#: errno values that mean "no space left" (quota, file too large included).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError (or h5py's RuntimeError) caused by a full disk / quota."""
    if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
        return True
    text = str(exc)  # HDF5 errors raised by h5py as RuntimeError / OSError name the errno in the text
    return isinstance(exc, (OSError, RuntimeError)) and ("No space left on device" in text or "errno = 28" in text)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (signal 0 probe)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove ``.NAME.<pid>.*.tmp`` files beside ``path`` whose process is gone; returns them.
    Temporary files of an older naming (no pid) are left alone and reported with a warning."""
    path = Path(path)
    removed, unknown = [], []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        m = _TMP_RE.match(p.name)
        if m is None or m["name"] != path.name:
            unknown.append(p)
            continue
        if not pid_alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
                removed.append(p)
    if unknown:
        warnings.warn(f"temporary files of an interrupted run beside {path}: {', '.join(p.name for p in unknown)} "
                      f"(from an older fastshower; remove them if no run is writing {path.name})", stacklevel=3)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def lock_path(path: str | Path) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it (a folder: ``NAME/.lock``)."""
    path = Path(path)
    return path / ".lock" if path.is_dir() else path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created; removed on release). A second holder
    gets :class:`ConcurrentWriterError` at once, naming the pid that holds it."""
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConcurrentWriterError(f"{what} is being written by another process (pid {holder}); "
                                        f"wait for it or choose another output") from None
        try:  # the file may have been removed (and re-created) by the previous holder meanwhile
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)
        os.close(fd)


def check_output(path: str | Path, overwrite: bool, what: str = "output") -> None:
    """:class:`OutputExistsError` when ``path`` exists and ``overwrite`` is false."""
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{what} {path} exists; give --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True, lock: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``overwrite=False``: refuse an existing ``path`` (checked before and again at the rename).
    ``lock=True``: hold ``.NAME.lock`` for the whole write (a concurrent writer fails at once).
    A full disk raises :class:`DiskFullError`; the temporary file is removed on any failure."""
    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(path), str(path)) if lock else contextlib.nullcontext():
        check_output(path, overwrite)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        try:
            yield tmp_path
            if not overwrite and path.exists():
                raise OutputExistsError(f"output {path} appeared while it was written; give --overwrite to replace it")
            os.replace(tmp_path, path)
        except BaseException as exc:
            tmp_path.unlink(missing_ok=True)
            if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                raise DiskFullError(f"disk full while writing {path} ({first_line(exc)}); nothing written") from exc
            raise


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class InterruptFlag:
    """Turn the first Ctrl-C (SIGINT) into a flag checked at safe points (between batches), so that
    the KeyboardInterrupt is raised there and not inside a finalizer (h5py objects, weakref
    callbacks), where Python prints "Exception ignored" and goes on. A second Ctrl-C interrupts at
    once. Only active in the main thread; elsewhere it is a no-op."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> "InterruptFlag":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def _handler(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C raises at once

    def check(self) -> None:
        """Raise KeyboardInterrupt when a Ctrl-C arrived."""
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
