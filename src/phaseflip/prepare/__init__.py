"""Preparing the behavior data: clean splits, reference replies, dreams."""
