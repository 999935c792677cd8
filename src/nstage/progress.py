"""What a user sees while a study is staged: one line per step on stderr, with its time.

::

    nstage: load ... 1.2 s
    nstage: anatomy ... 3.1 s
    nstage: landmarks ... 0.4 s
    nstage: lesions ... 1.0 s
    nstage: findings ... 0.5 s
    nstage: staging ... 0.0 s
    nstage: outputs ... 1.1 s

The pipeline times finer internal steps (``pipeline._Timer``); :data:`PARTS` maps each of
them onto the step a user sees, and a step's line is printed when its last part ends. Steps
that may run a model for minutes (TotalSegmentator, nnU-Net) show an elapsed-time bar on a
terminal once they have taken longer than :data:`BAR_DELAY_S`, so a CPU run is never minutes
of nothing. Lines go through ``tqdm.write`` under tqdm's lock, so a line printed from the
landmarks thread never lands inside a bar or another line.

A :class:`StepReporter` with ``enabled=False`` (``--quiet``) prints nothing and draws no bar.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

# The steps a user sees, in pipeline order.
USER_STEPS = ("load", "anatomy", "landmarks", "lesions", "findings", "staging", "outputs")

# Internal timer name -> (user step, True when it is the last part of that step).
# "crop" finds the thoracic box from the body and lungs: the first part of the anatomy.
PARTS: dict[str, tuple[str, bool]] = {
    "load": ("load", True),
    "crop": ("anatomy", False),
    "anatomy": ("anatomy", True),
    "landmarks": ("landmarks", True),
    "lesions": ("lesions", True),
    "findings": ("findings", True),
    "stations": ("staging", False),
    "staging": ("staging", True),
    "overlay": ("outputs", False),
    "write": ("outputs", True),
    "outputs": ("outputs", True),
}

# User steps that may run a deep-learning model for minutes.
MODEL_STEPS = frozenset({"anatomy", "lesions"})
# A step shows its elapsed-time bar only after this long (s): quick steps stay one line.
BAR_DELAY_S = 2.0
# How often the bar's elapsed time is redrawn (s).
BAR_REFRESH_S = 1.0
PREFIX = "nstage"


class StepReporter:
    """Prints one line per user step (``nstage: anatomy ... 3.1 s``) on a stream.

    Parameters
    ----------
    enabled : bool
        False prints nothing at all (``--quiet``).
    stream : text stream, optional
        Default ``sys.stderr`` (looked up when writing, so pytest's capture sees it).
    bars : bool or None
        Elapsed-time bars for model steps: None draws them only on a terminal.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None,
                 bars: bool | None = None) -> None:
        self.enabled = enabled
        self._stream = stream
        self.bars = bars
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def line(self, text: str) -> None:
        """Write one line, never inside a running bar (tqdm's lock, from any thread)."""
        if not self.enabled or _STOPPED.is_set():
            return
        from tqdm import tqdm

        tqdm.write(f"{PREFIX}: {text}", file=self.stream)

    def step(self, step: str, seconds: float) -> None:
        """Report a finished user step that took ``seconds``."""
        self.line(f"{step} ... {seconds:.1f} s")

    def part_done(self, name: str, seconds: float) -> None:
        """An internal step ``name`` ended after ``seconds``; prints its user step's line when
        this was the step's last part (an unknown name gets a line of its own)."""
        step, last = PARTS.get(name, (name, True))
        with self._lock:
            total = self._pending.pop(step, 0.0) + seconds
            if not last:
                self._pending[step] = total
                return
        self.step(step, total)

    @contextmanager
    def activity(self, name: str) -> Iterator[None]:
        """Around an internal step: an elapsed-time bar while a model step runs long."""
        step = PARTS.get(name, (name, True))[0]
        if not self.enabled or step not in MODEL_STEPS or self.bars is False:
            yield
            return
        with _elapsed_bar(f"{PREFIX}: {step}", self.stream, self.bars) as _:
            yield


@contextmanager
def _elapsed_bar(desc: str, stream: TextIO, force: bool | None) -> Iterator[None]:
    """An indeterminate bar ``desc 01:23`` redrawn each second by a helper thread; nothing
    is drawn before :data:`BAR_DELAY_S`, and it is erased when the step ends."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc} ... {elapsed}", file=stream,
               delay=BAR_DELAY_S, leave=False, mininterval=0.0,
               disable=None if force is None else not force)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(BAR_REFRESH_S):
            bar.update(0)  # redraws the elapsed time (after the delay)

    ticker = threading.Thread(target=tick, name="nstage-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


QUIET = StepReporter(enabled=False)
# Set once a command is interrupted: a step still finishing in another thread (landmarks)
# must not print after the command's last line.
_STOPPED = threading.Event()


def stop() -> None:
    """No more progress lines from any reporter in this process (after Ctrl-C)."""
    _STOPPED.set()


def reporter(enabled: bool) -> StepReporter:
    """A fresh reporter for one run (its pending parts are its own), or the silent one."""
    return StepReporter() if enabled else QUIET


def add_quiet_arg(parser) -> None:
    """``--quiet``: no progress lines or bars (results and errors still print)."""
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress lines or bars on stderr (the result summary and "
                             "errors still print)")
