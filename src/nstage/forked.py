"""Run a computation in a forked child process while this process goes on (Linux).

numpy's element-wise loops release the GIL, but most of ``scipy.ndimage`` (labelling, hole
filling, distance maps) does not, so a second *thread* running them mostly waits for the
first. A forked child shares this process's memory copy-on-write, runs on another core, and
sends its result back pickled through a pipe.

The child is an optimisation only. Where fork is not available (not Linux, or inside a
daemonic worker process, which may not have children), or where the child fails, dies or
takes longer than ``timeout_s``, :meth:`Forked.result` computes the value here instead, so
the caller always gets exactly what ``fn(*args)`` gives: its value or its exception, raised
in this process with its own traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Longest wait for a child (s) before the value is computed here instead.
TIMEOUT_S = 120.0


def fork_allowed() -> bool:
    """Linux, and not inside a daemonic worker process (which may not have children)."""
    import multiprocessing as mp

    return sys.platform.startswith("linux") and not mp.current_process().daemon


def block_sigint() -> bool:
    """Block SIGINT in this thread (True) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    return True


def start_child(target: Callable, args: tuple, name: str):
    """Start ``target(*args, conn)`` in a forked daemonic child; returns (process, receiving
    end of its pipe).

    Ctrl-C goes to the whole process group: the child ignores it (the parent reports the
    interruption once and ends the child), and SIGINT stays blocked across the fork so it
    cannot reach the child before the child ignores it (:func:`_child_entry`).
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_entry, args=(target, args, os.getpid(), receive, send),
                        daemon=True, name=name)
    blocked = block_sigint()
    try:
        child.start()
    except BaseException:
        receive.close()
        raise
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        send.close()
    return child, receive


def _child_entry(target: Callable, args: tuple, parent_pid: int, receive, send) -> None:
    """The child's setup, then ``target(*args, send)``.

    Ctrl-C is ignored (the parent handles it and ends the child). The child ends with its
    parent: a parent killed outright (a batch worker ended by the batch run) never reads the
    result, and a child left writing it into a full pipe would wait for ever, holding every
    descriptor it inherited. Closing its copy of the pipe's reading end makes that write fail
    once the parent is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    receive.close()
    _end_with_parent(parent_pid)
    target(*args, send)


PR_SET_PDEATHSIG = 1  # prctl(2)


def signal_on_parent_death(signum: int) -> bool:
    """Linux: ask the kernel to send ``signum`` to this process when its parent (the thread
    that created it) dies (prctl ``PR_SET_PDEATHSIG``); False where that is not available.

    A parent that died before this call is not noticed: compare ``os.getppid()`` with the
    parent's pid afterwards.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _end_with_parent(parent_pid: int) -> None:
    """The kernel ends this child when its parent dies, even one that died just now."""
    signal_on_parent_death(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


class Forked(Generic[T]):
    """``fn(*args)``, computed in a forked child when possible (see the module docstring).

    ``fn`` must not depend on anything this process changes after the fork, and must not
    write files: a child that fails is not trusted, and the value is computed again here.
    Call :meth:`result` exactly once, or :meth:`cancel` when the value is no longer needed.
    """

    def __init__(self, fn: Callable[..., T], *args, name: str = "nstage-forked",
                 timeout_s: float = TIMEOUT_S) -> None:
        self._fn, self._args, self._timeout_s = fn, args, timeout_s
        self._child = self._receive = None
        if not fork_allowed():
            return
        try:
            self._child, self._receive = start_child(_run, (fn, args), name)
        except OSError as exc:  # no memory or process slot for a child: compute here
            log.debug("no child for %s: %s", name, exc)

    def result(self) -> T:
        """The value, from the child or computed here."""
        ok, value = self._collect()
        if ok:
            return value
        if value is not None:
            log.debug("child failed (%s); computing here", value)
        return self._fn(*self._args)

    def cancel(self) -> None:
        """End the child, if any, without waiting for its value."""
        if self._child is not None:
            if self._child.is_alive():
                self._child.terminate()
            self._child.join()
            self._receive.close()
            self._child = None

    def _collect(self) -> tuple[bool, object]:
        if self._child is None:
            return False, None
        try:
            if not self._receive.poll(self._timeout_s):
                return False, f"no result within {self._timeout_s:.0f} s"
            return self._receive.recv()
        except EOFError:  # the child died without a word (killed, out of memory)
            return False, "the child ended without a result"
        finally:
            self.cancel()


def _run(fn: Callable, args: tuple, conn) -> None:
    try:
        value = fn(*args)
    except BaseException as exc:
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    else:
        try:
            conn.send((True, value))
        except Exception as exc:  # the value does not pickle: the parent computes it
            conn.send((False, f"result not sent: {type(exc).__name__}: {exc}"))
    conn.close()
