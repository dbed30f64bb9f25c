"""Errors a user can act on. Every boundary raises one of these with a message saying what to do."""


class ScmprError(Exception):
    """Base class for user-facing errors of scmpr_ros."""


class DatasetError(ScmprError):
    """A dataset directory or file is missing, malformed or inconsistent."""


class MapFileError(ScmprError):
    """A .scmpr-map file is corrupt, truncated, of another version, or does not fit the model."""


class CheckpointError(ScmprError):
    """A model checkpoint is missing, corrupt or incompatible."""


class InputError(ScmprError):
    """A malformed runtime input (image, scan, message)."""
