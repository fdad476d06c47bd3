"""The one timing helper: milliseconds per shower of a generation call.

Definition (:func:`time_per_shower`): the call is made ``warmup`` times (timed together, reported
apart as ``warmup_ms_per_shower``: first-call allocations, lazy initialisation, compilation), then
``repeats`` times ``calls_per_repeat`` calls; each repeat gives elapsed time / (calls_per_repeat x
n_showers) in ms. The headline ``ms_per_shower`` is the **median** over the repeats; ``min``,
``max`` and the interquartile range come with it (the minimum is the least disturbed figure on a
shared machine). ``clock``: ``"wall"`` (``time.perf_counter``, what a user waits; the default) or
``"cpu"`` (``time.process_time``, CPU seconds of the whole process summed over its threads: less
sensitive to other jobs on a loaded machine, but N busy threads count N times). ``sync`` (e.g.
``torch.cuda.synchronize``) is called before each clock reading, so asynchronous GPU work is
inside the interval.

Used by the inference benchmark (steps and CaloChallenge protocols), the int8 tuning of
``fastshower quantize``, the HPO speed term and the demo.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Clock = Literal["wall", "cpu"]
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_per_shower` (ms per shower). ``repeats_ms_per_shower``: one value per
    repeat; ``warmup_ms_per_shower``: 0 without warm-up."""

    ms_per_shower: float
    ms_per_shower_min: float
    ms_per_shower_max: float
    ms_per_shower_iqr: float
    warmup_ms_per_shower: float
    repeats_ms_per_shower: list[float] = field(default_factory=list)
    n_showers: int = 0
    clock: str = "wall"

    @property
    def showers_per_s(self) -> float:
        return 1e3 / self.ms_per_shower


def time_per_shower(call: Callable[[], Any], n_showers: int, *, warmup: int = 1, repeats: int = 5,
                    calls_per_repeat: int = 1, clock: Clock = "wall", sync: Callable[[], None] | None = None,
                    after_warmup: Callable[[], None] | None = None) -> Timing:
    """Time ``call`` (which generates ``n_showers`` showers) as defined in the module docstring.
    ``after_warmup`` runs between the warm-up and the timed repeats (e.g. start a GPU sampler)."""
    if n_showers < 1 or repeats < 1 or calls_per_repeat < 1 or warmup < 0:
        raise ValueError(f"need n_showers, repeats, calls_per_repeat >= 1 and warmup >= 0, got {n_showers}, "
                         f"{repeats}, {calls_per_repeat}, {warmup}")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; expected wall or cpu")
    now = CLOCKS[clock]
    wait = sync or (lambda: None)
    wait()
    t0 = now()
    for _ in range(warmup):
        call()
    wait()
    warm = (now() - t0) / (warmup * n_showers) * 1e3 if warmup else 0.0
    if after_warmup is not None:
        after_warmup()
    per_repeat = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(calls_per_repeat):
            call()
        wait()
        per_repeat.append((now() - t0) / (calls_per_repeat * n_showers) * 1e3)
    q1, q3 = np.percentile(per_repeat, [25, 75])
    return Timing(ms_per_shower=statistics.median(per_repeat), ms_per_shower_min=min(per_repeat),
                  ms_per_shower_max=max(per_repeat), ms_per_shower_iqr=float(q3 - q1), warmup_ms_per_shower=warm,
                  repeats_ms_per_shower=per_repeat, n_showers=int(n_showers), clock=clock)
