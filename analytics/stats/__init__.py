"""A/B statistics engine working from per-variant sufficient statistics (layout after gbstats).

``models`` holds the statistics, settings and result dataclasses and the shared test base; ``frequentist``
and ``bayesian`` hold the tests; ``srm``, ``multiple_testing`` and ``power`` are the experiment-level tools.
"""
