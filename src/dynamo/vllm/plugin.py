"""A vLLM general plugin: engine processes started by a Dynamo worker die with their parent.

vLLM runs its engine core (and that its model workers) in child processes. If the worker process is
killed outright (SIGKILL, the OOM killer), those children would live on, orphaned, holding the KV
cache's memory and a busy core. vLLM loads ``vllm.general_plugins`` entry points in every process it
starts; this one asks the kernel to SIGKILL the process when its parent dies — only in processes a
Dynamo worker started (it sets :data:`ENV`), so a plain ``vllm serve`` on the same install is untouched.
The engine core is the worker's own child; SIGTERM to the worker still shuts it down gracefully.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "DYN_VLLM_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if os.environ.get(ENV) != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
