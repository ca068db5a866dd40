"""What the tests share besides fixtures: paths, the canary secret, a free port."""

from __future__ import annotations

from pathlib import Path

from mnistkit.local._proc import free_port

__all__ = ["REPO", "HOME", "CANARY", "USER", "free_port"]

REPO = Path(__file__).resolve().parent.parent.parent
#: the embedded dockerd's state, kept between runs so a warm `make test` does not rebuild images
HOME = REPO / ".mnistkit"
CANARY = "canary-Pw-7f3a9c1e"  # the registry password; it must never leak anywhere
USER = "mnistkit-ci"
