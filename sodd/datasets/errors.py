"""Dataset errors, named after PaddleX's so `err_type` reads the same in both tools."""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset problem the user must fix; the message names the file and the entry."""

    @property
    def err_type(self) -> str:
        return type(self).__name__


class CheckFailedError(DatasetError):
    """The dataset breaks a rule of the COCO detection layout."""


class DatasetFileNotFoundError(CheckFailedError):
    """A file the dataset refers to does not exist."""


class ConvertFailedError(DatasetError):
    """A source dataset cannot be converted; nothing was written."""


class SplitFailedError(DatasetError):
    """A dataset cannot be re-split; nothing was written."""
