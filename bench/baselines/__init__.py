"""Baselines: the same rules written the way a bytewax user would write them, for honest comparisons."""
