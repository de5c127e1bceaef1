"""The practice-side extractor: read a practice's records, apply the data specification and Type 1
opt-outs, pseudonymise, and write a signed extract package. Never imports central code."""
