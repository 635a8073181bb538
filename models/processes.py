"""Whether a process of this host is still running: what lets a folder or a claim left by a killed process be
taken back (prepare's work folders, serving's spill claims and metric files, the runs' records)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` of this host exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
