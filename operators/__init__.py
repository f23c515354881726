"""halflife operators."""
