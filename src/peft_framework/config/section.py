"""The base of every config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config model: strict, immutable, hashable by content."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
