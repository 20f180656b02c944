"""User-facing errors: one clear line naming the thing to fix."""


class BenchError(Exception):
    """An error the user can fix. The CLI prints ``error: <message>`` and exits with status 2."""
