"""The one base class of the errors a user can fix: bad parameters, data, files, run ids.

``mtwork`` prints such an error as one line (``mtwork <command>: error: <message>``) and exits 2;
any other exception is a bug or an environment failure (a CUDA out-of-memory, a crashed worker) and
keeps its full traceback in the job's log. Subclasses keep their builtin base (``ValueError``,
``RuntimeError``) so callers that catch those still work.
"""
from __future__ import annotations


class UserError(Exception):
    """An error whose message tells the user what to change (it names the key, file or value)."""
