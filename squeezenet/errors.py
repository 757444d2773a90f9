"""The project's one error type for user errors: bad paths, damaged files, wrong arguments.

The CLI prints these as a single line and exits non-zero; anything else is a bug.
"""


class SqueezeNetError(Exception):
    """A user-facing error whose message says what went wrong and where."""


class FormatError(SqueezeNetError):
    """A weights or data file that is damaged, truncated or not what it claims to be."""


class OutputError(SqueezeNetError):
    """A file could not be written (no space, read-only, no permission, size limit).

    The file's earlier content, if any, is intact: every writer goes through ``io.atomic_output``.
    ``path``, ``cause`` and ``errno`` say which file and why (``io.output_error``).
    """

    def __init__(self, message: str, path: str = "", cause: str = "", errno: int | None = None):
        super().__init__(message)
        self.path, self.cause, self.errno = path, cause, errno
