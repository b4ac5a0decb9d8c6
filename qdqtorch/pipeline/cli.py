"""What the command-line front ends share: user errors as one `error: ...` line (no traceback), warnings as
`warning: ...` lines."""
from __future__ import annotations

import sys
import warnings
from typing import Callable

# errors that mean "the input is wrong" (paths, files, settings): said in one line, with the file/field named
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, RuntimeError, OSError)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_cli(body: Callable[[], int]) -> int:
    """Run a script's body: warnings print as `warning: ...`, a user error as `error: ...` with exit status 2."""
    warnings.formatwarning = _format_warning
    try:
        return body()
    except USER_ERRORS as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"error: {text}", file=sys.stderr)
        return 2
