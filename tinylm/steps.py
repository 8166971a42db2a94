"""Long jobs as lists of steps whose outputs are files (a ladder, an ablation, a sweep).

A step's result is a small JSON file written last and atomically, so a step that finds it is
complete and is skipped, and a job killed at any moment re-runs only the step it was in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from tinylm.errors import TinyLMError


def write_json(path: Path, value) -> None:
    """Write `value` as JSON to `path` so readers see the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def cached_step(result_file: Path, run: Callable[[], dict]) -> dict:
    """The result recorded in `result_file`, or, when there is none yet, run the step and record it."""
    if result_file.is_file():
        try:
            return json.loads(result_file.read_text())
        except ValueError:
            pass  # unreadable: the step runs again
    result = run()
    write_json(result_file, result)
    return result


def check_job_folder(out: Path, settings_name: str, what: str) -> None:
    """Refuse to start a job in a folder that holds other things (a run, prepared data, a user's files): a
    folder of this job's kind holds its `settings_name`; any other non-empty one belongs to someone else."""
    if out.exists() and not out.is_dir():
        raise TinyLMError(f"'{out}' is a file; give a folder for the {what}")
    if out.is_dir() and any(out.iterdir()) and not (out / settings_name).is_file():
        raise TinyLMError(f"'{out}' already holds other files and no {what}; choose another --out (or pass "
                          "--overwrite to replace what is there)")
