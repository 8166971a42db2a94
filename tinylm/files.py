"""Putting finished outputs in place: commands write into a staging folder beside their output and
swap it in only when complete, so a failure never leaves a half-written output or loses an old one."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_folder(out: Path, staging: Path) -> None:
    """Move the finished `staging` folder to `out`; an old `out` is moved aside first and deleted last."""
    if out.exists():
        old = staging.with_name(staging.name + "-old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
