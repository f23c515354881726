"""halflife bench."""
