"""Small-sample statistics, in plain Python: Student's t quantiles and the effective
degrees of freedom of a sum of variance estimates (Welch-Satterthwaite). The planner's
prediction intervals and the study's seed comparisons both use them; scipy is not a
dependency for two functions.
"""

from __future__ import annotations

import math


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (Numerical Recipes' betacf, Lentz's method)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_quantile(dof: float, level: float) -> float:
    """The two-sided `level` quantile of Student's t with `dof` (>= 1, possibly fractional:
    Welch-Satterthwaite's) degrees of freedom: t with P(|T| <= t) = level; the normal's
    as dof grows without bound."""
    dof = max(float(dof), 1.0)
    if not math.isfinite(dof) or dof > 1e7:
        dof = 1e7
    tail = 1.0 - level  # P(|T| > t) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2)
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if _incomplete_beta(dof / 2, 0.5, dof / (dof + mid * mid)) > tail:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Effective degrees of freedom of a sum of variance estimates (variance, dof)."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if v > 0)
    return total * total / denom if denom > 0 else math.inf
