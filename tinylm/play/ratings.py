"""Intervals and ratings from game results.

Score: (wins + draws / 2) / games. Its 95% interval is Wilson's score
interval for a proportion, applied to the score; with draws the score is not
a count of successes, and Wilson's interval is then slightly wider than it
needs to be (draws lower the variance), which errs on the safe side.

Ratings: a Bradley-Terry fit, P(i beats j) = sigmoid(r_i - r_j), with a draw
counted as half a win for each side, reported on the Elo scale (400 / ln 10
points per unit of r, so 400 Elo points are 10:1 odds). A Gaussian prior
r ~ N(0, PRIOR_SD^2) keeps a player who never loses finite: without it the
maximum-likelihood rating of an unbeaten player is infinite. Ratings are
shifted so the anchor player (the random one) is 0; the 95% interval of a
rating is that of its difference to the anchor, from the inverse Hessian of
the fitted log-posterior (the Laplace approximation).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile
ELO_PER_UNIT = 400 / math.log(10)
PRIOR_SD = 4.0  # in units of r: about 700 Elo points; weak next to a few dozen games per pairing


def wilson_interval(score: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval for a proportion `score` observed over `n` trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (score + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(n_players: int, results: list[tuple[int, int, float, int]], anchor: int = 0,
                  prior_sd: float = PRIOR_SD) -> list[tuple[float, float, float]]:
    """(Elo, low, high) per player from (i, j, score of i, games) results, the anchor at 0.

    Newton's method on the log-posterior, which is concave, so it converges from zero in a few steps."""
    r = np.zeros(n_players)
    precision = 1.0 / prior_sd ** 2
    for _ in range(100):
        gradient = -precision * r
        hessian = -precision * np.eye(n_players)
        for i, j, score, games in results:
            p = 1.0 / (1.0 + math.exp(r[j] - r[i]))
            gradient[i] += score - games * p
            gradient[j] -= score - games * p
            w = games * p * (1 - p)
            hessian[i, i] -= w
            hessian[j, j] -= w
            hessian[i, j] += w
            hessian[j, i] += w
        step = np.linalg.solve(hessian, gradient)
        r -= step
        if np.abs(step).max() < 1e-10:
            break
    covariance = np.linalg.inv(-hessian)
    ratings = []
    for i in range(n_players):
        variance = covariance[i, i] + covariance[anchor, anchor] - 2 * covariance[i, anchor]
        centre, half = r[i] - r[anchor], Z95 * math.sqrt(max(variance, 0.0))
        ratings.append((ELO_PER_UNIT * centre, ELO_PER_UNIT * (centre - half), ELO_PER_UNIT * (centre + half)))
    return ratings
