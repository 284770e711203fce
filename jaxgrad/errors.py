"""The errors a user's input or files can cause, as one family of exception types.

Every refusal of a flag, a data folder, a checkpoint, pretrained weights or a cache raises a
:class:`UserError` subclass whose message names the field or file and what to do; an
experiment's entry point prints it as one line (``error: <message>``) and exits with code 2,
the traceback only under ``--traceback`` or ``JAXGRAD_TRACEBACK=1``. Anything else that is
raised is a bug in jaxgrad and keeps its traceback.

Each type is also a ``ValueError`` so callers that caught ``ValueError`` keep working; the
``Missing*`` types are also ``FileNotFoundError`` (a path the user named does not exist).
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingCheckpointError",
    "MissingDataError",
    "MissingWeightsError",
    "OutDirError",
    "UserError",
    "WeightsError",
]


class UserError(ValueError):
    """Something the user gave is wrong; the message says which field/file and what to do."""


class ConfigError(UserError):
    """A flag or config field out of range, or a config that disagrees with a recorded run."""


class DataError(UserError):
    """A data folder or file that cannot be read as the expected data set."""


class CheckpointError(UserError):
    """A checkpoint or saved-params file that is missing, corrupt or does not match the model."""


class WeightsError(UserError):
    """Pretrained or converted weights that do not fit the model they are loaded into."""


class CacheError(UserError):
    """A cache file whose contents do not match its key."""


class OutDirError(UserError):
    """An output folder that the run may not use or replace."""


class MissingDataError(DataError, FileNotFoundError):
    """A data folder or file the user named does not exist."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No (complete) checkpoint or params file where the user pointed."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A pretrained-weights folder or file the user named does not exist."""
