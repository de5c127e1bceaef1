"""The shape of a GP system supplier's bulk extract: the practice extractor's columnar input."""
