"""The workbook's errors and warnings, and how a notebook shows them.

:class:`StudyAreaError` (bad input: the message names the file and the fault), :class:`DataWarning` (something in
the input to look at), :class:`WorkbookWarning` (a result the workbook made but does not trust). Importing this
module changes nothing; :func:`plain_warnings` (called in each notebook's Imports cell) shows the workbook's own
warnings as one plain line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["StudyAreaError", "DataWarning", "WorkbookWarning", "warn_data", "plain_warnings"]


class StudyAreaError(ValueError):
    """Bad input for a study area: the message names the file and the fault."""

    def __init__(self, source: str | os.PathLike, fault: str):
        self.source = str(source)
        self.fault = fault
        super().__init__(f"{source}: {fault}")


class DataWarning(UserWarning):
    """Something in the input that does not stop loading but that the user should look at."""


def warn_data(warns: list, source, message: str) -> None:
    text = f"{Path(str(source)).name}: {message}"
    warns.append(text)
    warnings.warn(text, DataWarning, stacklevel=3)


class WorkbookWarning(UserWarning):
    """A result the workbook made but does not trust (too few tiles, a class missing from training, ...)."""


def plain_warnings() -> None:
    """The workbook's own warnings (about the user's data and settings: ``DataWarning``, ``WorkbookWarning``)
    are messages for the reader: shown as one plain line, without the source line Python adds. Every other
    warning keeps Python's format."""
    if getattr(warnings.formatwarning, "lithocore", False):
        return
    original = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if getattr(category, "__module__", "").startswith("lithocore"):
            return f"{category.__name__}: {message}\n"
        return original(message, category, filename, lineno, line)

    formatwarning.lithocore = True
    warnings.formatwarning = formatwarning
