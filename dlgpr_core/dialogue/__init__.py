"""Interactive (dialogue) retrieval: the per-round metrics of the paper and its curriculum."""
