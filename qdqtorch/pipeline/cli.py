"""What the command-line front ends share: the project's own errors as one `error: ...` line (a bug keeps its
traceback), warnings as `warning: ...` lines, Ctrl-C as one line, `--debug` for the full traceback."""
from __future__ import annotations

import sys
import traceback
import warnings
from typing import Callable, List, Optional, Sequence

from ..errors import QdqtorchError

# errors that mean "the input is wrong" (settings, files, a missing package): said in one line, the file/field named.
# Anything else (TypeError, KeyError, RuntimeError from our code or torch) is a bug: its traceback is printed.
USER_ERRORS = (QdqtorchError, FileNotFoundError)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def pop_debug(argv: Optional[Sequence[str]]) -> "tuple[List[str], bool]":
    """Remove `--debug` from the arguments; True when it was there (print full tracebacks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return [a for a in args if a != "--debug"], "--debug" in args


def run_cli(body: Callable[[], int], *, debug: bool = False, interrupted: str = "") -> int:
    """Run a script's body: warnings print as `warning: ...`, a user error as `error: ...` (exit status 2), Ctrl-C
    as `interrupted` plus `what` (exit status 130); with `debug` errors re-raise with their traceback."""
    warnings.formatwarning = _format_warning
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\ninterrupted{': ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"error: {text}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("error: this is a bug in qdqtorch, not in your input (traceback above); please report it",
              file=sys.stderr)
        return 1
