"""Rules and text of two small perfect-information games: tic-tac-toe and connect four.

Both are "k in a row" games on a grid, so one `Game` describes them: tic-tac-toe
is a 3 x 3 grid where a move names any empty square and three in a row wins;
connect four is 6 rows x 7 columns where a move names a column, the disc falls
to the lowest empty cell, and four in a row wins. X moves first.

A position is the board as a string, one character per cell ('X', 'O' or '.'),
row by row from the top. Whose turn it is follows from the counts of X and O,
and a string is hashable, which memoised search and the model player's cache
of chosen moves rely on. A move is an index: of a cell (tic-tac-toe) or of a
column (connect four).

The prompt a model continues is a one-line title, the board, and "X plays
square" / "O plays column"; the continuation of a move is a space and the
move's 1-based number. Every continuation of a position is thus the same
length in characters (one digit), so the summed log-likelihood is compared
without length normalisation: dividing equal lengths would change nothing, and
dividing by token counts would favour whichever digits the tokenizer splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

EMPTY, FIRST, SECOND = ".", "X", "O"
DRAW = "draw"


@dataclass(frozen=True)
class Game:
    name: str
    rows: int
    cols: int
    connect: int  # stones in a row that win
    gravity: bool  # a move names a column and the disc falls to its lowest empty cell
    title: str  # first line of the prompt
    move_noun: str  # "square" or "column": the prompt ends "X plays <move_noun>"
    solvable: bool  # small enough for exhaustive search (perfect_value)

    def initial(self) -> str:
        return EMPTY * (self.rows * self.cols)

    def to_move(self, board: str) -> str:
        return FIRST if board.count(FIRST) == board.count(SECOND) else SECOND

    def legal_moves(self, board: str) -> list[int]:
        """Moves in increasing order; none once the game is over."""
        if self.winner(board):
            return []
        if self.gravity:
            return [c for c in range(self.cols) if board[c] == EMPTY]  # a column is open while its top cell is
        return [i for i, cell in enumerate(board) if cell == EMPTY]

    def play(self, board: str, move: int) -> str:
        if move not in self.legal_moves(board):
            raise ValueError(f"{self.name}: move {move + 1} is not legal in {board!r}")
        cell = move
        if self.gravity:
            cell = max(r * self.cols + move for r in range(self.rows) if board[r * self.cols + move] == EMPTY)
        return board[:cell] + self.to_move(board) + board[cell + 1:]

    @cached_property
    def lines(self) -> tuple[tuple[int, ...], ...]:
        """Every run of `connect` cells along a row, a column or either diagonal."""
        runs = []
        for r in range(self.rows):
            for c in range(self.cols):
                for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                    end_r, end_c = r + dr * (self.connect - 1), c + dc * (self.connect - 1)
                    if 0 <= end_r < self.rows and 0 <= end_c < self.cols:
                        runs.append(tuple((r + dr * k) * self.cols + c + dc * k for k in range(self.connect)))
        return tuple(runs)

    def winner(self, board: str) -> str | None:
        for line in self.lines:
            first = board[line[0]]
            if first != EMPTY and all(board[i] == first for i in line):
                return first
        return None

    def result(self, board: str) -> str | None:
        """'X' or 'O' for a win, 'draw' for a full board without one, None while the game goes on."""
        return self.winner(board) or (DRAW if EMPTY not in board else None)

    def render(self, board: str) -> str:
        """Tic-tac-toe shows each empty square's number, so the board says what the move numbers mean;
        connect four numbers the columns under the grid."""
        if self.gravity:
            rows = [" ".join(board[r * self.cols:(r + 1) * self.cols]) for r in range(self.rows)]
            return "\n".join(rows + [" ".join(str(c + 1) for c in range(self.cols))])
        cells = [cell if cell != EMPTY else str(i + 1) for i, cell in enumerate(board)]
        return "\n".join(" ".join(cells[r * self.cols:(r + 1) * self.cols]) for r in range(self.rows))

    def prompt(self, board: str) -> str:
        return f"{self.title}\n{self.render(board)}\n{self.to_move(board)} plays {self.move_noun}"

    def move_text(self, move: int) -> str:
        return f" {move + 1}"


@lru_cache(maxsize=None)
def perfect_value(game: Game, board: str) -> int:
    """The value of `board` to the player to move under perfect play (negamax): 0 for a draw, otherwise
    +-(1 + empty cells left when the game ends), so a win sooner and a loss later are worth more."""
    if not game.solvable:
        raise ValueError(f"{game.name} is too large to solve by exhaustive search")
    if game.winner(board):
        return -(1 + board.count(EMPTY))  # the player who just moved has won
    moves = game.legal_moves(board)
    if not moves:
        return 0
    return max(-perfect_value(game, game.play(board, move)) for move in moves)


# tic-tac-toe has 5,478 reachable positions; connect four about 4.5e12
TICTACTOE = Game("tictactoe", 3, 3, 3, False, "Tic-tac-toe. X moves first; three in a row wins.", "square", True)
CONNECT4 = Game("connect4", 6, 7, 4, True, "Connect four. X moves first; discs drop to the lowest empty row; "
                                           "four in a row wins.", "column", False)
GAMES = {game.name: game for game in (TICTACTOE, CONNECT4)}
