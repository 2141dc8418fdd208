"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad config value, a missing file, an unknown
prompt). Entry points print its message on one line and exit with status 2; everything else
is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A mistake in the user's input; the message says what is wrong and what to do."""
