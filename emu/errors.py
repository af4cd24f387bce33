"""Errors the user caused or can fix: the CLI prints them on one line and exits 2."""


class EmuError(Exception):
    """A clear, one-line problem with the user's input or machine."""

    exit_status = 2
