"""Self-play evaluation: models play small board games against each other and against fixed players.

A model plays by scoring each legal move's text after a text rendering of the
position and choosing the most likely one, with the scorer of `tinylm eval
--tasks` (tinylm.eval.likelihood), so any model `load_model` reads can play.
Rules and prompts live in tinylm.play.games, players in tinylm.play.players,
the round-robin in tinylm.play.tournament and its statistics in
tinylm.play.ratings. Uses evaluation's scorer and the model loaders; knows
nothing of training.
"""

from tinylm.play.tournament import run_play

__all__ = ["run_play"]
