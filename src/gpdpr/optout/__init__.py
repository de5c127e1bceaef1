"""Opt-outs: Type 1 (nothing leaves the practice, and what was collected is erased) and the
National Data Opt-out (held, but left out of every release), both changeable at any time."""
