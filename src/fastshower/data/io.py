"""Reading and writing shower files in any supported layout, streamed in chunks of events.

Readers detect the layout from the HDF5 keys, find the geometry (given > stored in the file >
guessed from the cell shape), convert to the shared convention (GeV, rad) and check every chunk
(finite, non-negative cells; energies and angles inside the geometry's ranges). Writers go
through :class:`ShowerWriter`, which appends blocks to growable, chunked, compressed datasets and
renames the file into place only when it closes cleanly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import functools
import json
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import yaml

import fastshower
from fastshower.data.calochallenge import CaloChallengeLayout
from fastshower.data.layout import Layout, geometry_is_normal_incidence
from fastshower.data.native import NativeLayout
from fastshower.data.threedgan import FixedAngleLayout, VariableAngleLayout
from fastshower.errors import DiskFullError
from fastshower.fileio import InterruptFlag, atomic_path, is_disk_full
from fastshower.geometry import PRESETS, Geometry, load_geometry
from fastshower.showers import ShowerSet

FORMAT_VERSION = 1
#: Layouts in detection order (the first whose keys match wins).
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (NativeLayout(), CaloChallengeLayout(),
                                                         VariableAngleLayout(), FixedAngleLayout())}
#: ``format`` names a writer accepts; ``3dgan`` picks the fixed- or variable-angle layout from the geometry.
FORMATS = ("native", "3dgan", "calochallenge", "3dgan_fixed_angle", "3dgan_variable_angle")
COMPRESSIONS = ("gzip", "lzf", None)
#: File attributes written by fastshower itself (everything else is provenance, kept in ShowerSet.attrs).
RESERVED_ATTRS = ("fastshower_format_version", "layout", "geometry", "geometry_yaml")
PathSpec = str | Path | Sequence[str | Path]


# --- paths and layouts ---------------------------------------------------------------------------

def resolve_paths(path: PathSpec) -> list[Path]:
    """A file, a glob pattern (``EleEscan_*.h5``, sorted) or a list of files -> existing files. An
    existing file is taken as it is, even when its name has glob characters (``run[1].h5``)."""
    if isinstance(path, (list, tuple)):
        files = [p for item in path for p in resolve_paths(item)]
        if not files:
            raise FileNotFoundError("no shower file given")
        return files
    text = str(path)
    if glob.has_magic(text) and not Path(text).is_file():
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise FileNotFoundError(f"no file matches {text}")
        return files
    p = Path(text)
    if not p.is_file():
        raise FileNotFoundError(f"shower file not found: {p}")
    return [p]


@contextlib.contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with f:
        yield f


def _layout_of(f: h5py.File, path: Path) -> Layout:
    for layout in LAYOUTS.values():
        if layout.matches(f):
            return layout
    raise ValueError(
        f"{path}: unknown shower layout, keys found: {', '.join(sorted(f.keys())) or 'none'}; expected "
        f"showers+primary_energy+incident_angle (native), ECAL+target or ECAL+energy+theta (3DGAN), or "
        f"incident_energies+showers (CaloChallenge)")


def detect_layout(path: PathSpec) -> str:
    """Layout name of a file (or of all files of a glob/list, which must agree):
    ``native``, ``3dgan_fixed_angle``, ``3dgan_variable_angle`` or ``calochallenge``."""
    names = set()
    for p in resolve_paths(path):
        with _open(p) as f:
            names.add(_layout_of(f, p).name)
    if len(names) != 1:
        raise ValueError(f"the files mix layouts: {', '.join(sorted(names))}")
    return names.pop()


def count_events(path: PathSpec) -> int:
    """Number of events in a file, or summed over the files of a glob/list."""
    total = 0
    for p in resolve_paths(path):
        with _open(p) as f:
            total += _layout_of(f, p).count_events(f)
    return total


# --- geometry ------------------------------------------------------------------------------------

def _stored_shape(layout: Layout, geometry: Geometry) -> tuple[int, ...]:
    return (geometry.n_cells,) if isinstance(layout, CaloChallengeLayout) else geometry.shape


def geometry_from_cell_shape(event_shape: tuple[int, ...]) -> Geometry | None:
    """The preset whose cells have this stored shape: 25^3 -> clic25, 51x51x25 -> clic51, (6480,)
    flattened voxels -> par04_ds2, (40500,) -> par04_ds3 (and their (n_r, n_alpha, n_layers) shapes)."""
    for g in PRESETS.values():
        if tuple(event_shape) == g.shape or (g.kind == "cylindrical" and tuple(event_shape) == (g.n_cells,)):
            return g
    return None


def geometry_of(shower_set: ShowerSet) -> Geometry:
    """The geometry of a shower set: its YAML in ``attrs['geometry_yaml']`` if read from a file with a
    user-defined detector, else the preset (or YAML file) named by ``shower_set.geometry``."""
    text = shower_set.attrs.get("geometry_yaml")
    if text:
        g = Geometry.model_validate(yaml.safe_load(text))
        if g.name == shower_set.geometry:
            return g
    return load_geometry(shower_set.geometry)


def _geometry_for_file(f: h5py.File, layout: Layout, path: Path, geometry: str | Geometry | None) -> Geometry:
    event_shape = layout.event_shape(f)
    if geometry is not None:
        g = load_geometry(geometry)
    elif "geometry_yaml" in f.attrs:
        g = Geometry.model_validate(yaml.safe_load(_text(f.attrs["geometry_yaml"])))
    else:
        found = geometry_from_cell_shape(event_shape)
        if found is None:
            raise ValueError(f"{path}: cannot tell the geometry from the cell shape {event_shape}; known shapes: "
                             f"{', '.join(f'{g.name} {g.shape}' for g in PRESETS.values())}; give the geometry")
        g = found
    expected = _stored_shape(layout, g)
    if event_shape != expected:
        raise ValueError(f"{path}: cells have shape {event_shape} but geometry {g.name!r} expects {expected} "
                         f"({layout.name} layout)")
    return g


# --- checks --------------------------------------------------------------------------------------

def check_showers(source: str, first_event: int, showers_gev: np.ndarray, primary_energy: np.ndarray,
                  incident_angle: np.ndarray, geometry: Geometry) -> None:
    """Raise a one-line ValueError naming the first bad event: NaN/inf or negative cells, non-positive
    or non-finite energies, energies or angles outside the geometry's ranges (relative slack 1e-6)."""
    flat = showers_gev.reshape(showers_gev.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise ValueError(f"{source}: event {first_event + int(np.argmax(bad))} has NaN or infinite cell energies")
    bad = (flat < 0).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{source}: event {first_event + i} has negative cell energies (min {flat[i].min():.3g} GeV); "
                         f"expected deposits >= 0")
    lo, hi = geometry.energy_range_gev
    bad = ~(np.isfinite(primary_energy) & (primary_energy >= lo * (1 - 1e-6)) & (primary_energy <= hi * (1 + 1e-6)))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{source}: event {first_event + i} has primary energy {primary_energy[i]:.6g} GeV, outside "
                         f"the range of geometry {geometry.name!r}, {lo:g}-{hi:g} GeV")
    alo, ahi = geometry.angle_range_rad
    bad = ~(np.isfinite(incident_angle) & (incident_angle >= alo - 1e-6) & (incident_angle <= ahi + 1e-6))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{source}: event {first_event + i} has incident angle {math.degrees(incident_angle[i]):.6g} "
                         f"deg, outside the range of geometry {geometry.name!r}, {math.degrees(alo):g}-"
                         f"{math.degrees(ahi):g} deg")


# --- reading -------------------------------------------------------------------------------------

def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_attrs(f: h5py.File, geometry: Geometry) -> dict:
    attrs = {}
    for key, value in f.attrs.items():
        if key in RESERVED_ATTRS:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[key] = value
    if geometry.name not in PRESETS:
        attrs["geometry_yaml"] = yaml.safe_dump(geometry.model_dump(mode="json"), sort_keys=False)
    return attrs


def iter_showers(path: PathSpec, chunk_size: int = 1000, geometry: str | Geometry | None = None
                 ) -> Iterator[ShowerSet]:
    """Stream a file (or a glob/list of files) as shower sets of at most ``chunk_size`` events, in
    the shared convention. Chunks do not span files; each chunk is read by h5py slicing and checked."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    files = resolve_paths(path)
    first: Geometry | None = None
    for p in files:
        with _open(p) as f:
            layout = _layout_of(f, p)
            g = _geometry_for_file(f, layout, p, geometry)
            if first is not None and g != first:
                raise ValueError(f"{p}: geometry {g.name!r} differs from {first.name!r} of {files[0]}")
            first = g
            attrs = _read_attrs(f, g)
            n = layout.count_events(f)
            for start in range(0, n, chunk_size):
                stop = min(n, start + chunk_size)
                showers, primary_energy, incident_angle = layout.read(f, start, stop, g)
                check_showers(str(p), start, showers, primary_energy, incident_angle, g)
                yield ShowerSet(showers, primary_energy, incident_angle, g.name, dict(attrs))


def read_events(path: str | Path, start: int, stop: int, geometry: str | Geometry | None = None) -> ShowerSet:
    """Events ``start:stop`` of one file (random access, e.g. for shuffled training chunks), converted
    and checked like :func:`iter_showers` chunks."""
    (p,) = resolve_paths(Path(path))
    with _open(p) as f:
        layout = _layout_of(f, p)
        g = _geometry_for_file(f, layout, p, geometry)
        n = layout.count_events(f)
        if not 0 <= start < stop <= n:
            raise ValueError(f"{p}: event range {start}:{stop} is outside the file's {n} events")
        showers, primary_energy, incident_angle = layout.read(f, start, stop, g)
        attrs = _read_attrs(f, g)
    check_showers(str(p), start, showers, primary_energy, incident_angle, g)
    return ShowerSet(showers, primary_energy, incident_angle, g.name, attrs)


def read_showers(path: PathSpec, geometry: str | Geometry | None = None, max_events: int | None = None,
                 chunk_size: int = 1000) -> ShowerSet:
    """Read a whole file (or glob/list), or its first ``max_events`` events, as one shower set."""
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    parts: list[ShowerSet] = []
    n = 0
    for part in iter_showers(path, chunk_size=chunk_size, geometry=geometry):
        if max_events is not None and n + len(part) > max_events:
            part = part[: max_events - n]
        parts.append(part)
        n += len(part)
        if max_events is not None and n >= max_events:
            break
    if not parts:
        raise ValueError(f"{path}: the file holds no events")
    return ShowerSet.concatenate(parts)


# --- writing -------------------------------------------------------------------------------------

def layout_for_format(format: str, geometry: Geometry) -> Layout:
    """The layout a writer uses for ``format`` (see :data:`FORMATS`) and ``geometry``."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "3dgan":
        format = "3dgan_fixed_angle" if geometry_is_normal_incidence(geometry) else "3dgan_variable_angle"
    layout = LAYOUTS[format]
    layout.check_writable(geometry)
    return layout


def _attr_value(value):
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    return json.dumps(value, default=str)


class ShowerWriter:
    """Append shower sets to a file in one layout; the file appears only when the block ends cleanly.

    ``with ShowerWriter("out.h5", "clic51", format="3dgan", attrs={"simulator": "gflash"}) as w:
    w.write(shower_set)``. ``attrs`` (provenance: simulator, seed, model, particle, ...) become file
    attributes, with ``date`` and ``fastshower_version`` added when absent. ``compression``: gzip
    (level 4, default), lzf or None. ``overwrite=False`` refuses an existing file
    (:class:`~fastshower.errors.OutputExistsError`).

    Safety (:func:`fastshower.fileio.atomic_path`): the file is written under a hidden temporary
    name and renamed into place at a clean close; ``.NAME.lock`` beside it is held meanwhile, so a
    second writer of the same path fails at once (:class:`~fastshower.errors.ConcurrentWriterError`).
    A Ctrl-C stops the write at the next :meth:`write` (KeyboardInterrupt there, not inside h5py's
    finalizers); a full disk raises :class:`~fastshower.errors.DiskFullError`. Either way the
    temporary file is removed and an existing output is untouched.
    """

    def __init__(self, path: str | Path, geometry: str | Geometry, format: str = "native",
                 attrs: dict | None = None, compression: str | None = "gzip", overwrite: bool = True) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; expected gzip, lzf or None")
        self.path = Path(path)
        self.geometry = load_geometry(geometry)
        self.layout = layout_for_format(format, self.geometry)
        self.compression = compression
        self.attrs = {k: v for k, v in (attrs or {}).items() if k not in RESERVED_ATTRS and v is not None}
        self.attrs.setdefault("date", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        self.attrs.setdefault("fastshower_version", fastshower.__version__)
        self.overwrite = overwrite
        self.n_events = 0
        self._file: h5py.File | None = None
        self._stack: contextlib.ExitStack | None = None
        self._interrupt = InterruptFlag()
        self._tmp: Path | None = None
        self._events_start = 0

    def __enter__(self) -> "ShowerWriter":
        self._stack = contextlib.ExitStack()
        tmp = self._tmp = self._stack.enter_context(atomic_path(self.path, overwrite=self.overwrite, lock=True))
        self._stack.enter_context(self._interrupt)
        self._events_start = _watch_disk_full(+1)
        try:
            self._file = h5py.File(tmp, "w")
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    @property
    def _hdf5_errors(self) -> list[BaseException]:
        return _DISK_FULL_EVENTS[self._events_start:]

    def _check_hdf5_errors(self) -> None:
        if self._hdf5_errors:
            raise DiskFullError(f"disk full while writing {self.path} "
                                f"({str(self._hdf5_errors[0]).splitlines()[0]}); nothing written")

    def _start(self) -> None:
        assert self._file is not None
        g = self.geometry
        self._file.attrs.update({
            "fastshower_format_version": FORMAT_VERSION, "layout": self.layout.name, "geometry": g.name,
            "geometry_yaml": yaml.safe_dump(g.model_dump(mode="json"), sort_keys=False)})
        for key, value in self.attrs.items():
            self._file.attrs[key] = _attr_value(value)
        self.layout.create(self._file, g, self.compression)

    def write(self, shower_set: ShowerSet) -> None:
        """Append a block of events (shared convention), after checking it against the geometry."""
        if self._file is None:
            raise RuntimeError("ShowerWriter.write needs the writer open: use it in a with block")
        self._interrupt.check()
        check_free_space(self.path, self._block_bytes(shower_set))
        self.geometry.check_shape(shower_set.showers)
        check_showers("shower set", self.n_events, shower_set.showers, shower_set.primary_energy,
                      shower_set.incident_angle, self.geometry)
        self.layout.append(self._file, shower_set.showers, shower_set.primary_energy, shower_set.incident_angle,
                           self.geometry, self.attrs)
        self._check_hdf5_errors()
        self.n_events += len(shower_set)

    def _block_bytes(self, shower_set: ShowerSet) -> int:
        """Bytes a block may add to the file: its uncompressed size, or after the first blocks twice
        the file's measured bytes per event (compression), whichever is smaller."""
        raw = shower_set.showers.nbytes + 2 * shower_set.primary_energy.nbytes
        if self.n_events and self._tmp is not None:
            with contextlib.suppress(OSError):
                return min(raw, int(2 * len(shower_set) * self._tmp.stat().st_size / self.n_events))
        return raw

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None
        f, self._file = self._file, None
        error = exc
        if error is None and self._interrupt.requested:  # Ctrl-C after the last write: no file
            error = KeyboardInterrupt()
        if error is None and self._hdf5_errors:
            try:
                self._check_hdf5_errors()
            except DiskFullError as disk_full:
                error = disk_full
        if f is not None:
            hdf5_failed = self._hdf5_errors or "write failed" in str(error)
            if error is not None and is_disk_full(error) and hdf5_failed:
                _leave_open(f)  # HDF5 failed a write: closing it now may crash the interpreter
            else:
                try:
                    f.close()
                except BaseException as close_error:  # e.g. the final flush on a full disk
                    _leave_open(f)
                    error = error if error is not None else close_error
        if self._events_start is not None:
            _watch_disk_full(-1)
            self._events_start = None
        if error is None:
            self._stack.__exit__(None, None, None)  # renames the file into place
            return False
        if self._stack.__exit__(type(error), error, error.__traceback__):
            return True
        if error is not exc:
            raise error
        return False


#: Free space kept beyond a block's uncompressed size before it is handed to HDF5 (bytes): the
#: chunk cache and the metadata written at close must fit.
SPACE_MARGIN_BYTES = 4 << 20
#: Set when HDF5 could not close a file (a write failed inside HDF5, e.g. a full disk found by HDF5
#: itself): HDF5 then crashes at interpreter exit, so the command line exits without its finalizers.
_HDF5_FILE_LEFT_OPEN = False


_LEFT_OPEN: list[h5py.File] = []
#: Full-disk errors h5py reported as "Exception ignored" (HDF5 write failures of freed objects,
#: e.g. chunk flushes) while at least one ShowerWriter is open; each writer checks the new ones.
_DISK_FULL_EVENTS: list[BaseException] = []
_WATCHERS = [0]
_LOCK = threading.Lock()


_INSTALLED_HOOK: list = [None]


def _unraisable_hook(unraisable, previous) -> None:
    if _WATCHERS[0] > 0 and is_disk_full(unraisable.exc_value):
        _DISK_FULL_EVENTS.append(unraisable.exc_value)
    else:
        previous(unraisable)


def _watch_disk_full(delta: int) -> int:
    """Count open writers (the hook is installed once and records only while one is open);
    returns the number of events seen so far."""
    with _LOCK:
        if sys.unraisablehook is not _INSTALLED_HOOK[0]:
            _INSTALLED_HOOK[0] = sys.unraisablehook = functools.partial(_unraisable_hook,
                                                                        previous=sys.unraisablehook)
        _WATCHERS[0] += delta
        return len(_DISK_FULL_EVENTS)


def _leave_open(f: h5py.File) -> None:
    """Keep an h5py file whose write failed inside HDF5 referenced (never closed nor freed: HDF5 may
    crash when it retries the failed flush); its temporary file is removed all the same."""
    global _HDF5_FILE_LEFT_OPEN
    _HDF5_FILE_LEFT_OPEN = True
    _LEFT_OPEN.append(f)


def hdf5_file_left_open() -> bool:
    """True after a ShowerWriter whose file HDF5 could not close (see ``_HDF5_FILE_LEFT_OPEN``)."""
    return _HDF5_FILE_LEFT_OPEN


def check_free_space(path: str | Path, needed_bytes: int) -> None:
    """:class:`~fastshower.errors.DiskFullError` when the file system of ``path`` has less than
    ``needed_bytes`` + :data:`SPACE_MARGIN_BYTES` free: found before HDF5 writes, so that the file
    can still be closed and removed cleanly (HDF5 cannot close a file after a failed write)."""
    st = os.statvfs(Path(path).parent)
    free = st.f_bavail * st.f_frsize
    if free < needed_bytes + SPACE_MARGIN_BYTES:
        raise DiskFullError(f"disk full: {free / 2**20:.1f} MiB free on the file system of {path}, a block needs "
                            f"up to {(needed_bytes + SPACE_MARGIN_BYTES) / 2**20:.1f} MiB; nothing written")


def write_showers(path: str | Path, shower_set: ShowerSet, format: str = "native",
                  geometry: str | Geometry | None = None, compression: str | None = "gzip") -> None:
    """Write a shower set to ``path`` atomically in ``format`` (native, 3dgan or calochallenge).
    The geometry defaults to the shower set's own (:func:`geometry_of`)."""
    g = load_geometry(geometry) if geometry is not None else geometry_of(shower_set)
    with ShowerWriter(path, g, format=format, attrs=shower_set.attrs, compression=compression) as writer:
        writer.write(shower_set)
