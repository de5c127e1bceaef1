"""The key custodian: keys, kept apart from the data. Only it can link a named person to their
pseudonyms (for an opt-out, or an approved re-identification); nothing links back."""
