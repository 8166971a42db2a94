"""Distillation's teacher side: a frozen model's next-token distribution over the student's vocabulary, computed
online (`Teacher`) or read from a cache of samples (`SampledTargets`). The loss lives in train/objectives.py.

Teacher. `train.distill_teacher` is a tinylm run, a Hugging Face folder or a GGUF file, read by tinylm.formats.
It stays in eval mode without gradients, with bf16 weights on a GPU (fp32 on CPU). Its logits are sliced to its
tokenizer's real tokens (padded embedding rows would otherwise take probability) and softmaxed in fp32.

Vocabulary. Either the student's tokenizer is the teacher's (the same token -> id table), or it was compacted
from it by `tinylm tokenizer compact` (an id_map.json, student id -> teacher id, next to the student's
tokenizer.json or in the run made by `tinylm inherit --tokenizer`). In the compact case the teacher reads the
student's ids mapped through id_map, so positions align 1:1 (the teacher sees a non-canonical segmentation only
where a dropped token was split), and the probability of each dropped teacher token d moves onto first(d), the
first kept token of d's decomposition: down d's merge chain (the first, lowest-rank merge that forms it, the chain
compaction keeps closed) through the first part until a kept token. Then p̂(v) = Σ_{u: first(u) = v} p_T(u) sums
to 1 over the student's vocabulary and is, to first order, the teacher's probability that the student's next
token is v (docs next-techniques.md §4.3). Renormalising over the kept tokens instead would give the right student
token ("Ġthous" when the teacher is sure of the dropped "Ġthousand") almost nothing. Temperature is applied
before the projection.

Cache. On CPU the teacher costs ~10x a 10M student's forward. With `train.distill_cache=DIR` each data batch's
target is K tokens per position drawn from p̂ at temperature τ, written once as DIR/batch_<index>.npz; the
empirical distribution of the draws (counts / K) then stands in for p̂. It is an unbiased estimate of p̂, so
forward-KL gradients stay unbiased, where a cached top K would be biased (arXiv 2503.16870). Draws come from a
generator seeded by (seed, batch index), so a resumed run, or a student that finds a file missing, gets the
same targets; students trained on the same data, seed, batch size and context share one teacher pass. The
teacher is loaded only when a batch is missing. DIR/manifest.json pins what the draws depend on, and each file
holds a checksum of the inputs it was drawn for.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tinylm.errors import TinyLMError
from tinylm.formats import load_model
from tinylm.tokenizer import PATCHES, Tokenizer
from tinylm.tokenizer.compact import ID_MAP, merge_parents

MANIFEST = "manifest.json"


class Teacher:
    """A frozen model whose next-token distribution, moved onto the student's vocabulary, is the target."""

    def __init__(self, path: str | Path, student: Tokenizer, id_map_file: Path | None, temperature: float,
                 seq_len: int, device: torch.device):
        with torch.random.fork_rng(devices=[]):  # building the model draws an init; leave the student's RNG as it was
            loaded = load_model(path, device)
        if loaded.tokenizer is None:
            raise TinyLMError(f"teacher '{path}' has no tokenizer.json, so its vocabulary cannot be checked against "
                              "the student's; add the tokenizer to the folder")
        if seq_len > loaded.model.cfg.max_seq_len:
            raise TinyLMError(f"the student's context ({seq_len}) is longer than the teacher's "
                              f"({loaded.model.cfg.max_seq_len}); lower model.max_seq_len")
        self.model = loaded.model.requires_grad_(False).eval()
        if device.type == "cuda":
            self.model = self.model.to(torch.bfloat16)
        self.vocab_size = loaded.tokenizer.vocab_size  # real tokens; the model may have padded rows
        self.student_vocab_size = student.vocab_size
        self.temperature = temperature
        inputs, projection = vocabulary_map(loaded.tokenizer, student, id_map_file)
        self.inputs = None if inputs is None else inputs.to(device)
        self.projection = None if projection is None else projection.to(device)

    @torch.no_grad()
    def targets(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """p̂ at the temperature, (B, T, student vocab) in fp32; `index` (the data batch) does not matter here."""
        ids = x if self.inputs is None else self.inputs[x]
        logits = self.model(ids)[..., :self.vocab_size].float()
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.projection is None:
            return probs
        projected = probs.new_zeros(*probs.shape[:-1], self.student_vocab_size)
        return projected.scatter_add_(-1, self.projection.expand_as(probs), probs)


def find_id_map(tokenizer_path: str) -> Path | None:
    """The id_map.json of a compact student tokenizer: beside its tokenizer.json, or in the run above the
    checkpoint folder that holds it (`tinylm inherit --tokenizer` writes it there)."""
    if tokenizer_path in ("", "byte", "bpe"):
        return None
    path = Path(tokenizer_path)
    folder = path if path.is_dir() else path.parent
    return next((f for f in (folder / ID_MAP, folder.parent / ID_MAP) if f.is_file()), None)


def vocabulary_map(teacher: Tokenizer, student: Tokenizer, id_map_file: Path | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(student id -> teacher id, teacher id -> student id of first(·)); both None when the tokenizers are one."""
    same = teacher.hf.get_vocab(with_added_tokens=True) == student.hf.get_vocab(with_added_tokens=True)
    if PATCHES in (teacher.kind, student.kind) and not (same and teacher.kind == student.kind):
        raise TinyLMError("a model over byte patches (data.tokenizer=patches:...) distills only from, or into, one "
                          "over the same byte patches")
    if same:
        return None, None
    if id_map_file is None:
        raise TinyLMError(f"the teacher's tokenizer ({teacher.vocab_size} tokens) is not the student's "
                          f"({student.vocab_size}) and the student's has no {ID_MAP}; distill into a student that "
                          "uses the teacher's tokenizer or one compacted from it (`tinylm tokenizer compact --parent "
                          "TEACHER`)")
    try:
        id_map = [int(i) for i in json.loads(id_map_file.read_text())]
    except (ValueError, TypeError) as e:
        raise TinyLMError(f"'{id_map_file}' is corrupt ({type(e).__name__}); compact the tokenizer again")
    wrong = (len(id_map) != student.vocab_size or not all(0 <= t < teacher.vocab_size for t in id_map)
             or any(teacher.hf.id_to_token(t) != student.hf.id_to_token(s) for s, t in enumerate(id_map)))
    if wrong:
        raise TinyLMError(f"'{id_map_file}' does not map the student's tokenizer into the teacher's; distill into a "
                          "student whose tokenizer was compacted from the teacher's (`tinylm tokenizer compact "
                          "--parent TEACHER`)")
    return torch.tensor(id_map), first_kept(teacher, student, id_map)


def first_kept(teacher: Tokenizer, student: Tokenizer, id_map: list[int]) -> torch.Tensor:
    """Teacher id -> student id of the first kept token of its decomposition (its own when it is kept)."""
    new_id = {t: s for s, t in enumerate(id_map)}
    parts = merge_parents(json.loads(teacher.hf.to_str()))
    projection = []
    for token in range(teacher.vocab_size):
        first = token
        while first not in new_id and first in parts:
            first = parts[first][0]
        if first not in new_id:  # no merge forms it (an added token): its text's first student token
            ids = student.encode(teacher.decode([token]))
            if not ids:
                raise TinyLMError(f"the teacher's token {teacher.hf.id_to_token(token)!r} (id {token}) is not in the "
                                  "student's vocabulary and has no decomposition into it; compact the teacher's "
                                  "tokenizer again (compaction keeps special tokens)")
            new_id[first] = ids[0]
        projection.append(new_id[first])
    return torch.tensor(projection)


class SampledTargets:
    """Targets from DIR/batch_<index>.npz: K draws per position from p̂, drawn on the first miss."""

    def __init__(self, directory: str | Path, make_teacher: Callable[[], Teacher], settings: dict, samples: int,
                 temperature: float, seed: int, vocab_size: int):
        self.directory, self.make_teacher, self.teacher = Path(directory), make_teacher, None
        self.samples, self.seed, self.vocab_size = samples, seed, vocab_size
        manifest = {**settings, "temperature": temperature, "samples": samples, "seed": seed}
        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.directory / MANIFEST
        if file.is_file():
            old = json.loads(file.read_text())
            differ = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
            if differ:
                raise TinyLMError(f"train.distill_cache='{directory}' holds targets made with other settings "
                                  f"({', '.join(f'{k}: {old.get(k)} there, {manifest.get(k)} here' for k in differ)}); "
                                  "use another folder")
        else:
            file.write_text(json.dumps(manifest, indent=1) + "\n")

    def targets(self, x: torch.Tensor, index: int) -> torch.Tensor:
        file = self.directory / f"batch_{index:09d}.npz"
        checksum = zlib.crc32(x.cpu().numpy().astype(np.int64).tobytes())
        if file.is_file():
            with np.load(file) as stored:
                if int(stored["checksum"]) != checksum:
                    raise TinyLMError(f"'{file}' was drawn for other inputs (different data?); use another "
                                      "train.distill_cache folder")
                draws = torch.from_numpy(stored["draws"].astype(np.int64)).to(x.device)
        else:
            draws = self._draw(x, index)
            tmp = file.with_suffix(".tmp")
            with open(tmp, "wb") as f:  # written whole, then renamed: a crash leaves no half file
                np.savez(f, draws=draws.cpu().numpy().astype(np.uint16 if self.vocab_size <= 65536 else np.int32),
                         checksum=np.int64(checksum))
            os.replace(tmp, file)
        counts = torch.zeros(*draws.shape[:-1], self.vocab_size, device=x.device)
        return counts.scatter_add_(-1, draws, torch.full(draws.shape, 1.0 / self.samples, device=x.device))

    def _draw(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self.teacher is None:
            self.teacher = self.make_teacher()
        probs = self.teacher.targets(x, index)
        # seeded by (seed, batch index), not the global RNG: any run that draws this batch draws the same
        seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        generator = torch.Generator(x.device).manual_seed(seed)
        draws = torch.multinomial(probs.flatten(0, 1), self.samples, replacement=True, generator=generator)
        return draws.view(*probs.shape[:-1], self.samples)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()[:16]
