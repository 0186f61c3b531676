"""The one user-facing error type: what is wrong and how to fix it, in one line."""


class CloExportError(Exception):
    """Raised by library code for anything the user can fix; the CLI prints it on one line."""
