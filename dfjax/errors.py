"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad config value, a missing file, an unknown
prompt). Entry points print its message on one line and exit with status 2; everything else
is a bug and keeps its traceback.

Data flow: the bottom; every layer may raise it and imports nothing else of dfjax.
"""


class UserError(ValueError):
  """A mistake in the user's input; the message says what is wrong and what to do."""


def one_line(text: str) -> str:
  """The non-empty lines of `text` joined by "; " (an error message must be one line)."""
  return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
