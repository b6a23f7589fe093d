"""Power laws fitted on a log-log scale: y ≈ a·x^b, so that log y = b·log x + log a.

A cost that grows as O(x^b) shows as a straight line of slope b on a log-log plot; the
least-squares slope over the measured sizes is the *measured* exponent, to hold against the
analytic one (e.g. 2 for self-attention against n, Vaswani et al. 2017, Table 1).
"""

from dataclasses import asdict, dataclass

import numpy as np


def fit_exponent(x, y) -> tuple[float, float]:
    """Least-squares fit of log y = slope·log x + intercept (natural logarithms).

    Args:
      x, y: positive numbers, same length >= 2, at least two distinct x.

    Returns:
      ``(slope, intercept)``: y ≈ exp(intercept)·x^slope.

    Raises:
      ValueError: fewer than two points, different lengths, non-positive values, or all x equal.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"need two 1-D sequences of one length >= 2, got shapes {x.shape} and {y.shape}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a log-log fit needs positive x and y")
    if np.all(x == x[0]):
        raise ValueError("a slope needs at least two distinct x")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


@dataclass(frozen=True)
class Fit:
    """A fitted exponent with what it was fitted on."""

    series: str  # what was measured, e.g. "additive/forward time"
    against: str  # the size variable, e.g. "m*t"
    exponent: float
    intercept: float
    x_min: float  # the fit range
    x_max: float
    points: int

    def predict(self, x):
        """exp(intercept)·x^exponent."""
        return np.exp(self.intercept) * np.asarray(x, dtype=np.float64) ** self.exponent

    def as_dict(self) -> dict:
        return asdict(self)


def fit_series(series: str, against: str, x, y, lowest: float | None = None) -> Fit:
    """:func:`fit_exponent` over the points with x >= ``lowest`` (None: all points).

    Raises:
      ValueError: as :func:`fit_exponent` (e.g. fewer than two points in range).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if lowest is not None:
        keep = x >= lowest
        x, y = x[keep], y[keep]
    slope, intercept = fit_exponent(x, y)
    return Fit(series, against, slope, intercept, float(x.min()), float(x.max()), int(x.size))
