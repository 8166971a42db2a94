import json
import random

import pytest
import torch

from tinylm.checkpoint import load_checkpoint, save_checkpoint
from tinylm.play import run_play
from tinylm.play.games import CONNECT4, DRAW, TICTACTOE
from tinylm.play.players import FirstLegalPlayer, ModelPlayer, PerfectPlayer, RandomPlayer
from tinylm.play.ratings import ELO_PER_UNIT, bradley_terry, wilson_interval
from tinylm.play.tournament import play_pairing

# a connect-four game found by random play that fills the board without four in a row
CONNECT4_DRAW = "472424756645422154157737216635626711335331"


def winner_by_strings(board: str, rows: int, cols: int, k: int) -> str | None:
    """Winner found another way than Game.lines: every row, column and diagonal read as a string and
    searched for k equal marks in a row."""
    grid = [board[r * cols:(r + 1) * cols] for r in range(rows)]
    strings = list(grid) + ["".join(grid[r][c] for r in range(rows)) for c in range(cols)]
    for offset in range(-rows, cols):
        strings.append("".join(grid[r][r + offset] for r in range(rows) if 0 <= r + offset < cols))
        strings.append("".join(grid[r][offset - r] for r in range(rows) if 0 <= offset - r < cols))
    found = {mark for mark in "XO" for s in strings if mark * k in s}
    assert len(found) <= 1, f"both players have {k} in a row in {board!r}"
    return found.pop() if found else None


def replay(game, digits: str) -> str:
    board = game.initial()
    for digit in digits:
        board = game.play(board, int(digit) - 1)
    return board


def test_tictactoe_has_5478_reachable_positions_and_its_rules_agree_with_brute_force():
    seen, frontier = {TICTACTOE.initial()}, [TICTACTOE.initial()]
    while frontier:
        board = frontier.pop()
        expected = winner_by_strings(board, 3, 3, 3)
        assert TICTACTOE.winner(board) == expected
        empty = [i for i, cell in enumerate(board) if cell == "."]
        over = expected is not None or not empty
        assert TICTACTOE.legal_moves(board) == ([] if over else empty)
        assert TICTACTOE.result(board) == (expected or DRAW if over else None)
        for move in TICTACTOE.legal_moves(board):
            child = TICTACTOE.play(board, move)
            assert child[move] == TICTACTOE.to_move(board) and sum(a != b for a, b in zip(board, child)) == 1
            if child not in seen:
                seen.add(child)
                frontier.append(child)
    assert len(seen) == 5478
    assert sum(TICTACTOE.result(b) == "X" for b in seen) == 626  # positions where X has just won
    assert sum(TICTACTOE.result(b) == "O" for b in seen) == 316
    assert sum(TICTACTOE.result(b) == DRAW for b in seen) == 16


@pytest.mark.parametrize("moves, winner", [
    ("1122334", "X"),  # bottom row
    ("1212121", "X"),  # column 1
    ("12234334744", "X"),  # diagonal rising to the right
    ("76654554144", "X"),  # diagonal rising to the left
    ("71122334", "O"),  # O completes the bottom row
    ("121212", None),
])
def test_connect4_detects_four_in_a_row_in_every_direction(moves, winner):
    board = replay(CONNECT4, moves)
    assert CONNECT4.winner(board) == winner == winner_by_strings(board, 6, 7, 4)
    assert (CONNECT4.legal_moves(board) == []) == (winner is not None)


def test_connect4_discs_fall_and_a_full_column_is_illegal():
    board = replay(CONNECT4, "444")
    assert board[5 * 7 + 3] == "X" and board[4 * 7 + 3] == "O" and board[3 * 7 + 3] == "X"
    full = replay(CONNECT4, "444444")
    assert 3 not in CONNECT4.legal_moves(full) and CONNECT4.legal_moves(full) == [0, 1, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="not legal"):
        CONNECT4.play(full, 3)


def test_connect4_full_board_without_four_in_a_row_is_a_draw():
    before_last = replay(CONNECT4, CONNECT4_DRAW[:-1])
    assert CONNECT4.result(before_last) is None and CONNECT4.legal_moves(before_last) == [0]
    board = CONNECT4.play(before_last, 0)
    assert "." not in board and winner_by_strings(board, 6, 7, 4) is None
    assert CONNECT4.result(board) == DRAW and CONNECT4.legal_moves(board) == []


def test_prompt_ends_where_a_move_number_follows():
    board = replay(TICTACTOE, "5")
    assert TICTACTOE.prompt(board).endswith("1 2 3\n4 X 6\n7 8 9\nO plays square")
    assert TICTACTOE.move_text(0) == " 1"
    assert CONNECT4.prompt(CONNECT4.initial()).endswith("1 2 3 4 5 6 7\nX plays column")


def test_first_legal_loses_both_seats_to_perfect_and_never_wins_from_any_opening():
    plain = play_pairing(TICTACTOE, FirstLegalPlayer(), PerfectPlayer(), rounds=1, seed=0, opening_moves=0)
    assert (plain["wins"], plain["draws"], plain["losses"]) == (0, 0, 2)
    opened = play_pairing(TICTACTOE, FirstLegalPlayer(), PerfectPlayer(), rounds=30, seed=0, opening_moves=2)
    assert opened["wins"] == 0 and opened["losses"] > opened["draws"]
    assert len({g["moves"] for g in opened["games"]}) > 10  # the openings make the games differ


def test_perfect_never_loses_to_random():
    r = play_pairing(TICTACTOE, PerfectPlayer(), RandomPlayer(), rounds=150, seed=3, opening_moves=2)
    assert r["losses"] == 0 and r["wins"] > 200


def test_perfect_player_refuses_connect4():
    with pytest.raises(Exception, match="plays only tictactoe"):
        PerfectPlayer().choose(CONNECT4, CONNECT4.initial(), random.Random(0))


def test_same_seed_gives_identical_results_and_another_seed_other_games(tmp_path):
    args = dict(models=[], games=["tictactoe", "connect4"], rounds=3, builtins=["first-legal"], progress=False)
    first = run_play(out=tmp_path / "a", seed=7, **args)
    again = run_play(out=tmp_path / "b", seed=7, **args)
    run_play(out=tmp_path / "c", seed=8, **args)
    assert first == again
    games = [(tmp_path / d / "pairings" / "connect4" / "first-legal--random.json").read_text() for d in "abc"]
    assert games[0] == games[1] != games[2]


def test_wilson_interval_matches_the_formula():
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.40383, abs=1e-4) and high == pytest.approx(0.59617, abs=1e-4)
    low, high = wilson_interval(1.0, 20)  # all wins: the interval stays below 1 at its low end
    assert high == 1.0 and low == pytest.approx(0.83887, abs=1e-4)


def test_bradley_terry_recovers_the_order_and_size_of_known_strengths():
    rng = random.Random(0)
    true_elo = [0, 150, 300, 450, 600]
    results = []
    for i in range(5):
        for j in range(i + 1, 5):
            p = 1 / (1 + 10 ** ((true_elo[j] - true_elo[i]) / 400))
            # draws (half-wins) with probability min(p, 1 - p), wins with p - that / 2: i's expected score is p
            draw = min(p, 1 - p)
            outcomes = [rng.random() for _ in range(400)]
            score = sum(1.0 if u < p - draw / 2 else 0.5 if u < p + draw / 2 else 0.0 for u in outcomes)
            results.append((i, j, score, len(outcomes)))
    fit = bradley_terry(5, results, anchor=0)
    elo = [e for e, _, _ in fit]
    assert elo[0] == 0 and elo == sorted(elo)
    for (e, low, high), truth in zip(fit[1:], true_elo[1:]):
        assert low < e < high and abs(e - truth) < 80


def test_bradley_terry_keeps_an_unbeaten_player_finite():
    (anchor, _, _), (elo, low, high) = bradley_terry(2, [(1, 0, 200.0, 200)], anchor=0)
    assert anchor == 0 and 400 < elo < 20 * ELO_PER_UNIT and low < elo < high


def test_a_tiny_model_plays_only_legal_moves_its_most_likely_ones(tiny_run):
    run, _, _ = tiny_run
    model = ModelPlayer(run, "tiny")
    for game in (TICTACTOE, CONNECT4):
        r = play_pairing(game, model, RandomPlayer(), rounds=2, seed=0, opening_moves=2)
        assert r["wins"] + r["draws"] + r["losses"] == 4
        for g in r["games"]:
            board = replay(game, g["moves"])  # every move legal, or play raises
            assert game.result(board) == g["result"]
    board = replay(TICTACTOE, "51")
    scores = model.move_scores(TICTACTOE, board)
    assert sorted(scores) == TICTACTOE.legal_moves(board)
    assert model.choose(TICTACTOE, board, random.Random(0)) == max(scores, key=scores.get)


def test_cli_plays_a_tiny_run_writes_table_and_plot_and_resumes(tiny_run, tmp_path, cli):
    run, _, _ = tiny_run
    out = tmp_path / "play"
    code, stdout, _ = cli("play", run, "--builtin", "perfect", "--games", "tictactoe", "--rounds", "2", "--out", out)
    assert code == 0
    assert (out / "ratings.png").stat().st_size > 0 and "| perfect |" in (out / "table.md").read_text()
    assert "| run vs perfect |" in stdout or "| perfect vs run |" in stdout
    report = json.loads((out / "results.json").read_text())
    assert set(report["players"]) == {"run", "perfect", "random"}
    assert sum(p["games"] for p in report["games"]["tictactoe"]["players"]) == 3 * 2 * 4
    pairing = out / "pairings" / "tictactoe" / "perfect--run.json"
    recorded = pairing.stat().st_mtime_ns
    assert cli("play", run, "--builtin", "perfect", "--games", "tictactoe", "--rounds", "2", "--out", out)[0] == 0
    assert pairing.stat().st_mtime_ns == recorded  # a finished pairing is not played again
    code, _, err = cli("play", run, "--builtin", "perfect", "--games", "tictactoe", "--rounds", "3", "--out", out)
    assert code == 2 and "other settings" in err and "--overwrite" in err


def test_a_model_changed_at_the_same_path_is_not_credited_with_its_old_games(tiny_run, tmp_path, cli):
    run, _, _ = tiny_run
    out = tmp_path / "play"
    assert cli("play", run, "--games", "tictactoe", "--rounds", "1", "--out", out)[0] == 0
    trained = load_checkpoint(run)
    with torch.no_grad():
        next(trained.model.parameters()).add_(0.01)
    save_checkpoint(run, trained.model, trained.cfg, trained.tokenizer)  # retrained in place
    code, _, err = cli("play", run, "--games", "tictactoe", "--rounds", "1", "--out", out)
    assert code == 2 and "has changed since its games" in err


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_tournament(tiny_run, cli):
    run, _, _ = tiny_run
    code, _, err = cli("play", "--builtin", "first-legal", "--out", run, "--overwrite")
    assert code == 2 and "no tinylm play results" in err and (run / "checkpoint").is_dir()


@pytest.mark.parametrize("args, message", [
    (["no/such/model"], "does not exist"),
    (["--games", "chess", "--builtin", "first-legal"], "unknown game 'chess'"),
    (["--no-random", "--builtin", "first-legal"], "two players or more"),
    (["--builtin", "perfect", "--games", "connect4"], "plays only tictactoe"),
    (["--builtin", "alphazero"], "unknown built-in player"),
])
def test_cli_mistakes_are_one_line_errors(tmp_path, cli, args, message):
    code, _, err = cli("play", *args, "--out", tmp_path / "play")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
