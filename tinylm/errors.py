"""User-facing errors.

A `TinyLMError` is a mistake the user can fix (a missing file, an unknown
config key, a corrupt checkpoint). The CLI prints its message as one line and
exits non-zero without a traceback; anything else is a bug and keeps its
traceback.
"""


class TinyLMError(Exception):
    """An error caused by input the user controls; its message says what to do."""
