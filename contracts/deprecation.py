"""Names kept for one release after they were renamed or replaced: each use warns.

A module lists its old names with `renamed({...})` as its `__getattr__`; the value is looked up
only when the old name is used, so an old name never costs an import, and never stands beside
the new one as an equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

REMOVED_IN = "coupon-contracts 1.2"


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Say that `old` is deprecated in favour of `new` (a DeprecationWarning)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in {REMOVED_IN}: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed(
    module: str, old_names: Mapping[str, tuple[str, Callable[[], Any]]]
) -> Callable[[str], Any]:
    """A module `__getattr__` for `old_names`: old name -> (what to use instead, loader)."""

    def __getattr__(name: str) -> Any:
        if name not in old_names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, load = old_names[name]
        warn_deprecated(f"{module}.{name}", new)
        return load()

    return __getattr__
