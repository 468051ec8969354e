"""Standalone commands beside the study: throughput benchmark, cost estimate, judge agreement."""
