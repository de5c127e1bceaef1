"""Errors meant for people: each says what went wrong, where, and what to do."""


class UserError(Exception):
    """A problem the person running gpdpr can fix; the CLI prints it on one line and exits 2."""


class NotAllowed(UserError):
    """Something the rules do not allow (a move an application cannot make from its state, or
    a person acting outside their role). Raised before anything is written, so the record is
    left exactly as it was."""
