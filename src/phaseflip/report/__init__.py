"""The report: the six answers, the figures, and summary.md."""
