"""Producing experiment events (exposures, outcomes) to Kafka without losing them.

Light on purpose: the ranker imports this package, so nothing heavy (statsmodels, torch) is imported here.
"""
