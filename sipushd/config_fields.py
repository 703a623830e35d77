"""Building blocks shared by the config file's sections (`sipushd.config_schema`).

The strict base model, the collector that raises cross-field problems as one
ValidationError naming each key, the error for a bad value, and the path types:
a relative path is resolved against the directory in the validation context
(`base_dir`), and `FileRef` marks the paths of files read at start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sipushd.yamlpos import Loc

__all__ = [
    "ConfigPath",
    "FileRef",
    "Issues",
    "Model",
    "PublicFile",
    "Seconds",
    "SecretFile",
    "resolve_path",
    "value_error",
]


@dataclass(frozen=True)
class FileRef:
    """Marks a path field as a file read at start; `private` if it holds a secret."""

    private: bool = False


class Model(BaseModel):
    """A frozen config model that forbids unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Issues:
    """Collects cross-field problems and raises them as one ValidationError."""

    def __init__(self) -> None:
        self.items: list[InitErrorDetails] = []

    def add(self, loc: Loc, message: str, value: Any = None) -> None:
        """Blame the key at `loc` (relative to the model) with `message`."""
        error = PydanticCustomError("config_rule", message)
        self.items.append(InitErrorDetails(type=error, loc=loc, input=value))

    def raise_any(self, title: str) -> None:
        """Raise every problem collected so far, if any."""
        if self.items:
            raise ValidationError.from_exception_data(title, self.items)


def value_error(message: str) -> PydanticCustomError:
    """The error a validator raises for a bad value; the loader shows `message`."""
    return PydanticCustomError("config_value", message)


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """`value` made absolute against the context's `base_dir` (the config file's directory)."""
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(os.path.normpath(value))


ConfigPath = Annotated[Path, AfterValidator(resolve_path)]
PublicFile = Annotated[Path, AfterValidator(resolve_path), FileRef(private=False)]
SecretFile = Annotated[Path, AfterValidator(resolve_path), FileRef(private=True)]
Seconds = Annotated[float, Field(gt=0)]
