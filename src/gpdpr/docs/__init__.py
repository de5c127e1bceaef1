"""What the documentation site generates from the code (docs/hooks.py calls it at build time)."""
