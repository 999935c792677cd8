"""nstage.forked: a value computed in a forked child, or here when the child cannot give it;
the caller always sees exactly what ``fn(*args)`` gives (value or exception)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from nstage import forked
from nstage.forked import Forked

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the value is computed in a child only on Linux")


def _pid_and_sum(values):
    return os.getpid(), int(np.sum(values))


@LINUX_ONLY
def test_value_comes_from_a_child_process():
    job = Forked(_pid_and_sum, np.arange(10))
    pid, total = job.result()
    assert total == 45
    assert pid != os.getpid(), "computed here, not in a child"


def _fails_only_in_the_child(parent_pid):
    if os.getpid() != parent_pid:
        raise MemoryError("no memory in the child")
    return "computed here"


@LINUX_ONLY
def test_a_child_that_fails_is_not_trusted_and_the_value_is_computed_here():
    assert Forked(_fails_only_in_the_child, os.getpid()).result() == "computed here"


def _dies_in_the_child(parent_pid):
    if os.getpid() != parent_pid:
        os._exit(9)  # as the kernel's out-of-memory killer would end it
    return "computed here"


@LINUX_ONLY
def test_a_child_that_dies_is_replaced_by_computing_here():
    assert Forked(_dies_in_the_child, os.getpid()).result() == "computed here"


def _hangs_in_the_child(parent_pid):
    if os.getpid() != parent_pid:
        import time

        time.sleep(60)
    return "computed here"


@LINUX_ONLY
def test_a_child_that_takes_too_long_is_ended_and_the_value_computed_here():
    job = Forked(_hangs_in_the_child, os.getpid(), timeout_s=0.5)
    child = job._child
    assert job.result() == "computed here"
    assert not child.is_alive()


def _raises(value):
    raise ValueError(f"bad value {value}")


def test_the_exception_of_fn_is_raised_here_with_its_own_type():
    with pytest.raises(ValueError, match="bad value 3"):
        Forked(_raises, 3).result()


def test_without_fork_the_value_is_computed_here(monkeypatch):
    monkeypatch.setattr(forked, "fork_allowed", lambda: False)
    job = Forked(_pid_and_sum, [1, 2, 3])
    assert job._child is None
    assert job.result() == (os.getpid(), 6)


@LINUX_ONLY
def test_cancel_ends_the_child():
    job = Forked(_hangs_in_the_child, -1)
    child = job._child
    job.cancel()
    assert not child.is_alive()


def test_measurement_context_survives_packing():
    """The findings' anatomy masks cross the process boundary bit-packed: unpacked, every
    mask is identical to the one computed here."""
    from nstage.findings import measurement_context, measurement_context_from
    from nstage.phantom import PhantomSpec, make_phantom

    phantom = make_phantom(PhantomSpec(nodes=("10R",), seed=0))
    anatomy, ct = phantom.anatomy, phantom.ct
    here = measurement_context(anatomy, ct)
    back = measurement_context_from(anatomy, here.packed())
    assert back.anatomy is anatomy
    assert set(back.groups) == set(here.groups)
    for name, mask in here.groups.items():
        assert back.groups[name].dtype == bool
        assert np.array_equal(back.groups[name], mask), name
    for name in ("lung_filled", "mediastinal", "hilar"):
        assert np.array_equal(getattr(back, name), getattr(here, name)), name
    assert here.hilar.any() and here.mediastinal.any()  # the comparison is not vacuous


PARENT_KILLED = r"""
import os, signal, sys, time
import numpy as np
from nstage.forked import Forked

def big(seconds):
    time.sleep(seconds)
    return np.ones(20_000_000, dtype=np.uint8)  # far more than a pipe holds

job = Forked(big, 0.5)
print(job._child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a batch run ends a worker: no cleanup at all
"""


@LINUX_ONLY
def test_a_child_whose_parent_is_killed_ends_instead_of_waiting_for_ever():
    """A batch worker ended by the batch run never reads its child's result; the child must
    not stay blocked writing it into the full pipe (holding the worker's inherited pipes, so
    the batch run would wait for ever)."""
    import subprocess
    import time

    proc = subprocess.run([sys.executable, "-c", PARENT_KILLED], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the orphaned child is still running"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
