"""halflife engine."""
