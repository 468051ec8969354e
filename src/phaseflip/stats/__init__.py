"""Statistics of the study: intervals, divergences, t50, differences. No model, no files."""
