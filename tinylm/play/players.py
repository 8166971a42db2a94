"""Players: a language model choosing moves by likelihood, and three fixed players used as anchors.

Every player answers `choose(game, board, rng)` with a legal move. `rng` is
the game's seeded random.Random; only the random player draws from it.

- ModelPlayer: any model `load_model` reads (a tinylm run, a Hugging Face
  folder, a GGUF file). It scores each legal move's text as a continuation of
  the position's prompt (tinylm.play.games) with the likelihood scorer of
  `tinylm eval --tasks` and plays the highest summed log-likelihood; equal
  scores go to the lowest move number. The choice depends on the position
  only, so it is cached: a position met again costs nothing.
- RandomPlayer: a legal move uniformly at random.
- FirstLegalPlayer: the lowest-numbered legal move.
- PerfectPlayer: tic-tac-toe by exhaustive minimax (games.perfect_value).
  Among equally valued moves it takes the quickest win (or the slowest loss),
  then the lowest square. Connect four is too large to search this way, so it
  plays only tic-tac-toe.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timezone
from pathlib import Path

from tinylm.checkpoint import find_checkpoint
from tinylm.errors import TinyLMError
from tinylm.eval.likelihood import encode_requests, loglikelihoods
from tinylm.formats import LoadedModel, load_model, model_kind
from tinylm.manifest import MANIFEST
from tinylm.play.games import TICTACTOE, Game, perfect_value

BUILTIN_PLAYERS = ("random", "first-legal", "perfect")


class RandomPlayer:
    name, source, version, games = "random", "builtin:random", "builtin", None  # games None: every game

    def choose(self, game: Game, board: str, rng: random.Random) -> int:
        return rng.choice(game.legal_moves(board))


class FirstLegalPlayer:
    name, source, version, games = "first-legal", "builtin:first-legal", "builtin", None

    def choose(self, game: Game, board: str, rng: random.Random) -> int:
        return game.legal_moves(board)[0]


class PerfectPlayer:
    name, source, version, games = "perfect", "builtin:perfect", "builtin", (TICTACTOE.name,)

    def choose(self, game: Game, board: str, rng: random.Random) -> int:
        if game.name not in self.games:
            raise TinyLMError(f"the perfect player plays only {', '.join(self.games)}, not {game.name}")
        # max keeps the first of equal values: the lowest square
        return max(game.legal_moves(board), key=lambda move: -perfect_value(game, game.play(board, move)))


class ModelPlayer:
    """A model that plays the legal move whose text it finds most likely after the position's prompt.
    The model loads on the first move, so a tournament whose games are all recorded never loads it."""

    games = None

    def __init__(self, source: str | Path, name: str, device: str = "cpu", batch_size: int = 16):
        # resolved, so the pairing files it is recorded in match whatever folder the command runs from
        self.source, self.name, self.device, self.batch_size = str(Path(source).resolve()), name, device, batch_size
        self.version = model_version(Path(source))  # a path that is not a model fails here, before any game
        self._loaded: LoadedModel | None = None
        self._chosen: dict[tuple[str, str], int] = {}

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.source, self.device)
            if self._loaded.tokenizer is None:
                raise TinyLMError(f"'{self.source}' has no tokenizer.json; a model plays by scoring move texts, "
                                  "which needs its tokenizer")
        return self._loaded

    def move_scores(self, game: Game, board: str) -> dict[int, float]:
        """Summed log-likelihood of each legal move's text after the prompt."""
        moves = game.legal_moves(board)
        prompt = game.prompt(board)
        requests = encode_requests(self.loaded.tokenizer, [(prompt, game.move_text(m)) for m in moves])
        scores = loglikelihoods(self.loaded.model, requests, self.batch_size)
        return {move: logprob for move, (logprob, _) in zip(moves, scores)}

    def choose(self, game: Game, board: str, rng: random.Random) -> int:
        key = (game.name, board)
        if key not in self._chosen:
            scores = self.move_scores(game, board)
            self._chosen[key] = max(scores, key=scores.__getitem__)  # dicts keep move order: lowest move on ties
        return self._chosen[key]


def model_version(source: Path) -> str:
    """What identifies the files holding a model's weights, so that a model retrained or replaced at the same path
    gets another version and games recorded for the old one are not taken for its own: the checksum manifest's
    hash where tinylm wrote one (a retrained model has new checksums), else the files' size and modification time
    (to the microsecond: a retraining within the same second must not look unchanged)."""
    root = find_checkpoint(source) if model_kind(source) == "tinylm" else source
    if root.is_dir() and (root / MANIFEST).is_file():
        return f"manifest sha256 {hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()[:16]}"
    files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file()]
    newest = max(f.stat().st_mtime for f in files)
    return (f"{sum(f.stat().st_size for f in files)} bytes, modified "
            f"{datetime.fromtimestamp(newest, timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}")


def make_players(models: list[str | Path], builtins: list[str], device: str = "cpu") -> list:
    """Players for model paths and built-in names, each with a name that is unique and safe in a file name."""
    for name in builtins:
        if name not in BUILTIN_PLAYERS:
            raise TinyLMError(f"unknown built-in player '{name}'; choose from {', '.join(BUILTIN_PLAYERS)}")
    fixed = {"random": RandomPlayer, "first-legal": FirstLegalPlayer, "perfect": PerfectPlayer}
    players = [fixed[name]() for name in dict.fromkeys(builtins)]
    taken = {p.name for p in players}
    for source in models:
        path = Path(source)
        # a checkpoint folder says less than the run holding it
        stem = path.resolve().parent.name if path.name == "checkpoint" else path.name.removesuffix(".gguf")
        base = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem) or "model"
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        players.append(ModelPlayer(source, name, device))
    return players
