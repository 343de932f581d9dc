"""The errors a user can fix: bad params and inconsistent worlds. Stages print them as one line."""

from __future__ import annotations


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class WorldError(ValueError):
    """A world, class or split named in params does not exist or is inconsistent."""
