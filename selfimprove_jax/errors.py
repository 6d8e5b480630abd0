"""The one exception type for mistakes in a user's input (files, specs, flags).

Raised with a one-line message naming the file or value and what is wrong; the CLI
prints it as a single line and exits with status 2 instead of a traceback."""


class UserError(ValueError):
  """A user's input is missing, malformed or unsupported."""
