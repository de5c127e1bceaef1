"""gpdpr: a national GP data service built to be trusted."""

__version__ = "0.1.0"
