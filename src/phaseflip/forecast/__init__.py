"""The transition and its forecasts: analysis, forecast methods, proper scores, the simulation bench."""
