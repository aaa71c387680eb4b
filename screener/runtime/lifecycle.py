"""Child processes that cannot outlive the daemon.

Every process screener starts (worker processes, their decode processes) asks the kernel
to kill it when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of
``screener serve`` or of a worker leaves no orphan holding memory, a GPU or leases. Where
prctl is unavailable a thread watches the parent's pid instead. The multiprocessing
resource tracker needs nothing: it exits when the last process holding its pipe is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

#: linux/prctl.h
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, *, watch_only: bool = False) -> None:
    """Kill this process (SIGKILL) as soon as ``parent_pid`` is no longer its parent.

    Call first thing in a child. The kernel signal fires when the parent *thread* that
    started this process ends, so children are started from a thread that lives as long
    as the parent process does (the main thread, or the worker's loop). A child started
    from a short-lived thread (a web request's) passes ``watch_only``: a thread of its own
    then checks the parent's pid every second instead.
    """
    armed = False
    if sys.platform.startswith("linux") and not watch_only:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(1.0)
    os._exit(1)
