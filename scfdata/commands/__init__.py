"""Sub-commands of the `scfdata` CLI: one module each, thin wrappers over the package.

Helpers shared by the command modules live here (every submodule is a sub-command): a JSON object
read from a file or an option, with errors that name the file or the option. Other JSON values (lists,
numbers) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path


def _where(e: json.JSONDecodeError) -> str:
    return f"{e.msg} at line {e.lineno}, column {e.colno}"


def json_option(text: str, option: str, expected: str = "a JSON object") -> dict:
    """The JSON object given to ``option``; invalid JSON or a non-object is a ValueError naming it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option}: not valid JSON ({_where(e)}), got {text[:80]!r}; expected {expected}, "
                         """e.g. '{"key": 1}' (double quotes, the whole object quoted in the shell)""") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option}: expected {expected}, got a JSON {type(value).__name__}: {text[:80]!r}")
    return value


def json_file(path: str | Path, expected: str) -> dict:
    """The JSON object in a file; a file that is not one is a ValueError naming it and what was expected
    there (``expected``: e.g. "the sums JSON written by `scfdata statistics-shard`"). A missing file
    raises FileNotFoundError."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected {expected}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({_where(e)}); expected {expected}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected {expected} (a JSON object), found a JSON {type(value).__name__}")
    return value
