"""The key custodian: keys, kept apart from the data; only it can turn a pseudonym back."""
