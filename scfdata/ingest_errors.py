"""Ingest's error class and the check that every mapped key is found, without ingest's imports: `scfdata
assemble` raises the same error at its start-up cost (difflib only), and :mod:`scfdata.ingest` re-exports
both."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .keys import KeyMapping


class IngestError(ValueError):
    """The input cannot be ingested (unreadable file, mapped key absent everywhere, on_error=raise)."""


def check_keys_found(coverage: dict[str, int], keys_seen: set[str], mapping: KeyMapping,
                     where: str) -> None:
    """A mapped key absent from every frame is a typo: an error with a did-you-mean."""
    missing = []
    for name, key, _ in mapping.items():
        target = "atomic_multipoles" if name == "atomic_dipoles" else name
        if key in keys_seen or coverage.get(target, 0) > 0:
            continue
        hint = difflib.get_close_matches(key, sorted(keys_seen), n=1, cutoff=0.5)
        missing.append(
            f"{name} -> {key!r} is in no frame" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if missing:
        raise IngestError(
            f"{where}: mapped keys absent from every frame: " + "; ".join(missing)
            + f". Keys present in the frames: {', '.join(sorted(keys_seen))}. Fix the key mapping."
        )
