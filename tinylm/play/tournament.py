"""The round-robin: every pair of players plays every game, seats swapped every game.

For each game and each pair, `rounds` rounds of two games are played. A round
starts from an opening of `opening_moves` random legal moves (in tic-tac-toe,
only moves that keep the game a draw under perfect play), the same for every
pairing of that round, and is played once with each player moving first
after it. Without openings two deterministic players (the models, first-legal,
perfect) would play the same two games over and over, and the intervals,
which assume independent games, would claim a precision the games do not
have. Every game's random draws come from a random.Random seeded with the
seed, the game, the round and the seats, so a tournament is reproducible for
a seed whatever the order of its players.

A pairing's games are recorded in DIR/pairings/<game>/<a>--<b>.json when it is
complete, with the settings and each model's path and version (size and time
of its weights); a re-run skips recorded pairings, so a killed tournament
resumes and adding a player plays only the new pairings, and it refuses a
record whose settings or models have changed. Summaries (tinylm.play.ratings)
go to DIR/results.json, DIR/table.md and DIR/ratings.png.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Sequence

from tinylm.errors import TinyLMError
from tinylm.play.games import FIRST, GAMES, SECOND, Game, perfect_value
from tinylm.play.players import make_players
from tinylm.play.ratings import bradley_terry, wilson_interval
from tinylm.progress import progress_bar
from tinylm.steps import cached_step, write_json


def opening(game: Game, seed: int, round_index: int, moves: int) -> list[int]:
    """Random legal moves; in a game small enough to solve, only moves that keep it a draw under perfect play,
    so the opening does not hand either seat a lost game (a perfect player must never lose)."""
    rng = random.Random(f"{seed}/{game.name}/opening/{round_index}")
    board, played = game.initial(), []
    while len(played) < moves and game.result(board) is None:
        candidates = game.legal_moves(board)
        if game.solvable:
            candidates = [m for m in candidates if perfect_value(game, game.play(board, m)) == 0]
        move = rng.choice(candidates)
        board = game.play(board, move)
        played.append(move)
    return played


def play_game(game: Game, x_player, o_player, opening_moves: list[int], rng: random.Random) -> dict:
    """One game from an opening; moves are recorded as their 1-based numbers, one digit each."""
    board, moves = game.initial(), list(opening_moves)
    for move in opening_moves:
        board = game.play(board, move)
    while game.result(board) is None:
        player = x_player if game.to_move(board) == FIRST else o_player
        move = player.choose(game, board, rng)
        board = game.play(board, move)  # raises on an illegal move: a player bug, never a result
        moves.append(move)
    return {"x": x_player.name, "o": o_player.name, "opening": len(opening_moves),
            "moves": "".join(str(m + 1) for m in moves), "result": game.result(board)}


def play_pairing(game: Game, a, b, rounds: int, seed: int, opening_moves: int, bar=None) -> dict:
    """`rounds` rounds of two games between players a and b; wins, draws and losses are a's."""
    games = []
    for round_index in range(rounds):
        start = opening(game, seed, round_index, opening_moves)
        for x, o in ((a, b), (b, a)):
            rng = random.Random(f"{seed}/{game.name}/{round_index}/{x.name}/{o.name}")
            games.append(play_game(game, x, o, start, rng))
            if bar is not None:
                bar.update(1)
    a_won = [g["result"] == (FIRST if g["x"] == a.name else SECOND) for g in games]
    draws = sum(g["result"] == "draw" for g in games)
    return {"game": game.name, "players": [a.name, b.name], "sources": [a.source, b.source],
            "versions": [a.version, b.version],
            "settings": {"rounds": rounds, "seed": seed, "opening_moves": opening_moves},
            "wins": sum(a_won), "draws": draws, "losses": len(games) - sum(a_won) - draws, "games": games}


def run_play(models: Sequence[str | Path], out: str | Path, games: Sequence[str] = ("tictactoe", "connect4"),
             rounds: int = 20, seed: int = 0, random_player: bool = True, builtins: Sequence[str] = (),
             opening_moves: int = 2, device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Play (or resume) the round-robin in `out`; returns what results.json records."""
    for name in games:
        if name not in GAMES:
            raise TinyLMError(f"unknown game '{name}'; choose from {', '.join(GAMES)}")
    if not games:
        raise TinyLMError(f"no game given; choose from {', '.join(GAMES)}")
    if rounds < 1 or opening_moves < 0:
        raise TinyLMError("rounds must be at least 1 and opening moves at least 0")
    players = make_players(list(models), [*builtins, *(["random"] if random_player else [])], device)
    if len(players) < 2:
        raise TinyLMError(f"a tournament needs two players or more, got {len(players)}; give more models, "
                          "or drop --no-random")
    for p in players:
        if p.games is not None and not set(p.games) & set(games):
            raise TinyLMError(f"the {p.name} player plays only {', '.join(p.games)}; add it to --games or leave "
                              "the player out")
    out = Path(out)
    if overwrite and out.exists():
        if any(out.iterdir()) and not (out / "pairings").is_dir():
            # --out pointing at a run by mistake must not delete the run
            raise TinyLMError(f"'{out}' holds files but no tinylm play results; --overwrite deletes only those, "
                              "so give another --out")
        shutil.rmtree(out)
    settings = {"rounds": rounds, "seed": seed, "opening_moves": opening_moves}
    pairings = []  # (game, a, b, result file): a before b by name, so the file does not depend on the order given
    for name in dict.fromkeys(games):
        for i, a in enumerate(players):
            for b in players[i + 1:]:
                if all(p.games is None or name in p.games for p in (a, b)):
                    first, second = sorted((a, b), key=lambda p: p.name)
                    pairings.append((GAMES[name], first, second,
                                     out / "pairings" / name / f"{first.name}--{second.name}.json"))
    to_play = sum(2 * rounds for *_, path in pairings if not path.is_file())
    records = []
    with progress_bar(total=to_play, disable=not progress, desc="play", unit="game") as bar:
        for game, a, b, path in pairings:
            record = cached_step(path, lambda: play_pairing(game, a, b, rounds, seed, opening_moves, bar))
            if (record["settings"], record["sources"]) != (settings, [a.source, b.source]):
                raise TinyLMError(f"'{path}' holds games played with other settings or models "
                                  f"({record['settings']}, {record['sources']}); give another --out or pass "
                                  "--overwrite to play again")
            for player, version in zip((a, b), record["versions"]):
                if version != player.version:
                    raise TinyLMError(f"'{player.source}' has changed since its games in '{path}' were played "
                                      f"({version}, now {player.version}); pass --overwrite to play again or "
                                      "give another --out")
            records.append(record)
    report = summarise(players, records, settings, list(dict.fromkeys(games)))
    write_json(out / "results.json", report)
    (out / "table.md").write_text(format_table(report) + "\n")
    plot_ratings(report, out / "ratings.png")
    return report


def summarise(players: list, records: list[dict], settings: dict, games: list[str]) -> dict:
    """Per game: each pairing's and each player's wins, draws, losses, score with its Wilson interval, and
    Bradley-Terry ratings anchored at the random player (else the first player)."""
    report = {"settings": settings, "players": {p.name: p.source for p in players}, "games": {}}
    for name in games:
        pair_rows, totals = [], {}
        for r in (r for r in records if r["game"] == name):
            n = r["wins"] + r["draws"] + r["losses"]
            pair_rows.append({"players": r["players"], "games": n, "wins": r["wins"], "draws": r["draws"],
                              "losses": r["losses"], **_score(r["wins"], r["draws"], n)})
            for player, (w, l) in zip(r["players"], ((r["wins"], r["losses"]), (r["losses"], r["wins"]))):
                t = totals.setdefault(player, [0, 0, 0])
                t[0], t[1], t[2] = t[0] + w, t[1] + r["draws"], t[2] + l
        if not pair_rows:
            continue
        names = [p.name for p in players if p.name in totals]
        anchor = names.index("random") if "random" in names else 0
        index = {n: i for i, n in enumerate(names)}
        fit = bradley_terry(len(names), [(index[r["players"][0]], index[r["players"][1]],
                                          r["wins"] + r["draws"] / 2, r["games"]) for r in pair_rows], anchor)
        player_rows = []
        for player, (elo, low, high) in zip(names, fit):
            w, d, l = totals[player]
            player_rows.append({"player": player, "games": w + d + l, "wins": w, "draws": d, "losses": l,
                                **_score(w, d, w + d + l), "elo": elo, "elo_low": low, "elo_high": high})
        player_rows.sort(key=lambda row: -row["elo"])
        report["games"][name] = {"anchor": names[anchor], "players": player_rows, "pairings": pair_rows}
    return report


def _score(wins: int, draws: int, n: int) -> dict:
    score = (wins + draws / 2) / n
    low, high = wilson_interval(score, n)
    return {"score": score, "score_low": low, "score_high": high}


def format_table(report: dict) -> str:
    s = report["settings"]
    lines = []
    for name, g in report["games"].items():
        lines += [f"### {name}: {2 * s['rounds']} games per pairing ({s['rounds']} openings of "
                  f"{s['opening_moves']} random moves, each played with both seats), seed {s['seed']}", "",
                  f"| player | games | W | D | L | score | 95% Wilson | Elo ({g['anchor']} = 0) | 95% interval |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---|"]
        for r in g["players"]:
            interval = "anchor" if r["player"] == g["anchor"] else f"{r['elo_low']:+.0f} to {r['elo_high']:+.0f}"
            lines.append(f"| {r['player']} | {r['games']} | {r['wins']} | {r['draws']} | {r['losses']} | "
                         f"{r['score']:.3f} | {r['score_low']:.3f}-{r['score_high']:.3f} | {r['elo']:+.0f} | "
                         f"{interval} |")
        lines += ["", "| pairing | games | W | D | L | score of the first | 95% Wilson |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in g["pairings"]:
            lines.append(f"| {r['players'][0]} vs {r['players'][1]} | {r['games']} | {r['wins']} | {r['draws']} | "
                         f"{r['losses']} | {r['score']:.3f} | {r['score_low']:.3f}-{r['score_high']:.3f} |")
        lines.append("")
    lines.append("score = (W + D/2) / games; Elo: Bradley-Terry fit, a draw as half a win, Gaussian prior "
                 "(sd about 700 Elo) so an unbeaten player stays finite")
    return "\n".join(lines)


def plot_ratings(report: dict, out: Path) -> None:
    """One panel per game: each player's Elo with its 95% interval, the strongest on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(report["games"].items())
    tallest = max(len(g["players"]) for _, g in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.5 * tallest + 1.6), dpi=110, squeeze=False)
    for ax, (name, g) in zip(axes[0], panels):
        rows = g["players"][::-1]
        y = list(range(len(rows)))
        elo = [r["elo"] for r in rows]
        errors = [[r["elo"] - r["elo_low"] for r in rows], [r["elo_high"] - r["elo"] for r in rows]]
        ax.errorbar(elo, y, xerr=errors, fmt="o", color="#3b7dd8", capsize=3)
        ax.axvline(0, color="#9aa5b1", lw=1)
        ax.set_yticks(y, [r["player"] for r in rows])
        ax.set_xlabel(f"Elo ({g['anchor']} = 0), 95% interval")
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    s = report["settings"]
    fig.suptitle(f"tinylm play: {2 * s['rounds']} games per pairing, seed {s['seed']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
