"""Measuring a model state: the judge, and the order parameters of one checkpoint."""
