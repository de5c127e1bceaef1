"""The trusted research environment: questions come in, only checked aggregates go out."""
