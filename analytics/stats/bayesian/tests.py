"""Bayesian chance-to-win on the same lift estimates as the frequentist tests.

The effect is modelled as Gaussian around the observed lift with the lift's standard error (a normal
likelihood, as gbstats' effect model does). With a flat prior the posterior is that likelihood; with a
Gaussian prior N(m0, v0) the posterior is the precision-weighted combination.
"""

from __future__ import annotations

import math

from scipy import special

from analytics.stats.models.results import BayesianResult
from analytics.stats.models.settings import BayesianConfig
from analytics.stats.models.tests import BaseABTest


def expected_loss(mean: float, sd: float) -> float:
    """E[max(0, -X)] for X ~ N(mean, sd^2): what choosing the side X > 0 costs when it is wrong."""
    if sd == 0:
        return max(0.0, -mean)
    z = mean / sd
    return float(sd * math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) - mean * special.ndtr(-z))


class EffectBayesianTest(BaseABTest[BayesianConfig, BayesianResult]):
    """Chance that treatment beats control (respecting ``inverse`` metrics), credible interval, risks."""

    def compute_result(self) -> BayesianResult:
        config = self.config
        error = self.data_error()
        if error is not None:
            return BayesianResult(
                difference_type=config.difference_type,
                control_mean=self.stat_a.mean,
                treatment_mean=self.stat_b.mean,
                error=error,
            )
        diff = self.difference()
        if config.prior_variance is None:
            post_mean, post_var = diff.estimate, diff.variance
        else:
            # precision-weighted, written without 1 / variance: a variance below 1e-308 made that inf, the
            # posterior variance 0 and chance_to_win a ZeroDivisionError
            total = diff.variance + config.prior_variance
            post_var = diff.variance * config.prior_variance / total
            post_mean = (diff.estimate * config.prior_variance + config.prior_mean * diff.variance) / total
        post_sd = math.sqrt(post_var)
        z = float(special.ndtri(0.5 + config.interval_level / 2.0))
        better = -1.0 if config.inverse else 1.0
        return BayesianResult(
            difference_type=config.difference_type,
            control_mean=self.stat_a.mean,
            treatment_mean=self.stat_b.mean,
            estimate=post_mean,
            ci=(post_mean - z * post_sd, post_mean + z * post_sd),
            se=post_sd,
            chance_to_win=float(special.ndtr(better * post_mean / post_sd)),
            risk_control=expected_loss(-better * post_mean, post_sd),
            risk_treatment=expected_loss(better * post_mean, post_sd),
        )
