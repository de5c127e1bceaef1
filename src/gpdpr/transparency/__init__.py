"""The transparency log: every use of the data, publicly verifiable (see gpdpr.transparency.store
for its files, .publish for what each entry means, .verify for checking a copy of it)."""
