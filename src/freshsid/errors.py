"""The one exception type for errors a user can cause.

Its message is a single sentence naming the thing at fault and the fix; the CLI
prints it without a traceback and exits with code 2. Bugs raise anything else.
"""


class FreshsidError(Exception):
    """Bad input, a missing file, a mismatched artifact: something the user can fix."""
