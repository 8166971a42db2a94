"""Manifests: what a folder written by tinylm held when it was finished, checked when it is read.

A checkpoint, a prepared data folder or a saved tokenizer gets a `manifest.json`
listing each file's size and SHA-256, written last, after every file it lists
and before the folder is swapped into place. Reading the folder checks the
sizes (free) and, by default, the checksums, so a truncated or bit-flipped file
is one clear error naming it instead of garbage weights or tokens.

Checksums cost a read of every byte: about 0.2 s per 100 MB on the 2-core
development machine (SHA-256 with the CPU's SHA instructions). That is small
beside loading a model or a training run, so they are checked on every load;
TINYLM_VERIFY=sizes checks only sizes, for prepared corpora of many GB read
often. Must not import the rest of tinylm except errors and steps.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tinylm.errors import TinyLMError
from tinylm.steps import write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
VERIFY_ENV = "TINYLM_VERIFY"  # "sizes" skips checksums; anything else (or unset) checks them


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seal(folder: str | Path, names: list[str] | None = None) -> None:
    """Record `names` (default: every file in `folder`) in its manifest, keeping the entries of other
    files still there. Call it after the files are complete: the manifest is what says they are."""
    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    try:
        kept = _entries(folder)
    except TinyLMError:
        kept = {}  # a damaged manifest is replaced; the files it listed are then no longer checked
    files = {name: entry for name, entry in kept.items() if (folder / name).is_file()}
    for name in names:
        path = folder / name
        files[name] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    write_json(folder / MANIFEST, {"format": FORMAT_VERSION, "files": dict(sorted(files.items()))})


def verify(folder: str | Path, what: str, advice: str, names: list[str] | None = None, skip: tuple[str, ...] = (),
           checksums: bool | None = None) -> bool:
    """Check the files the manifest of `folder` lists (only those of `names`, none of `skip`) against it.

    `what` names the kind of file in errors ("checkpoint file"), `advice` says what to do ("restore it or
    retrain"). Raises TinyLMError naming the first bad file. Returns False, having checked nothing, for a
    folder written before manifests existed (no manifest.json): those still load, with the checks their
    readers always made. `checksums` defaults to on unless TINYLM_VERIFY=sizes."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return False
    files = _entries(folder, advice)
    if checksums is None:
        checksums = os.environ.get(VERIFY_ENV, "").strip().lower() != "sizes"
    wanted = files if names is None else names
    listed = [(name, files[name]) for name in wanted if name in files and name not in skip]
    for name, entry in listed:  # every size first: a truncation is found without hashing anything
        path = folder / name
        if not path.is_file():
            raise TinyLMError(f"{what} '{path}' is missing (its folder's {MANIFEST} lists it); {advice}")
        size = path.stat().st_size
        if size < entry["size"]:
            raise TinyLMError(f"{what} '{path}' is corrupt: truncated to {size} of {entry['size']} bytes; {advice}")
        if size != entry["size"]:
            raise TinyLMError(f"{what} '{path}' is corrupt: it has {size} bytes, {entry['size']} were written; "
                              f"{advice}")
    if checksums:
        for name, entry in listed:
            if sha256_of(folder / name) != entry["sha256"]:
                raise TinyLMError(f"{what} '{folder / name}' is corrupt: its bytes do not match the checksum "
                                  f"written with it; {advice}")
    return True


def _entries(folder: Path, advice: str = "write the folder again") -> dict[str, dict]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest["format"] > FORMAT_VERSION:
            raise TinyLMError(f"'{path}' has format {manifest['format']}, newer than this tinylm reads "
                              f"({FORMAT_VERSION}); upgrade tinylm")
        return {str(name): {"size": int(e["size"]), "sha256": str(e["sha256"])} for name, e in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TinyLMError(f"manifest '{path}' is corrupt ({type(e).__name__}); {advice}") from None
