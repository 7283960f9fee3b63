"""Vendor labelling styles, read from hccnode/data/phantom_vendors.toml."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def styles() -> dict[str, dict]:
    """All vendor styles by name (siemens, ge, philips, canon, standard)."""
    text = resources.files("hccnode").joinpath("data/phantom_vendors.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def style(name: str) -> dict:
    try:
        return styles()[name]
    except KeyError:
        raise ValueError(f"vendor: {name!r} is not one of {', '.join(sorted(styles()))}") from None
