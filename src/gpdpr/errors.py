"""Errors meant for people: each says what went wrong, where, and what to do."""


class UserError(Exception):
    """A problem the person running gpdpr can fix; the CLI prints it on one line and exits 2."""
