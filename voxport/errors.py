"""Errors that the CLI turns into one clear line and an exit code.

Anything a user can cause (bad recipe, missing checkpoint, unknown architecture) is raised as a
`VoxportError` with a message that says what is wrong and what to do, so the CLI never shows a
traceback from deep inside torch.
"""

from __future__ import annotations


class VoxportError(Exception):
    """A user-facing failure; `exit_code` 2 means bad input or usage."""

    exit_code = 2


class BadInput(VoxportError):
    """The input (checkpoint, recipe, text, path) is wrong; the message says how to fix it."""


class ParityFailed(VoxportError):
    """A parity threshold from the recipe was missed (exit code 1)."""

    exit_code = 1
