"""Typed errors a user can cause. Each message says what was wrong and what to do."""


class KmtoolsError(Exception):
    """Base class: the CLI prints ``str(err)`` in one line and exits 1."""

    exit_code = 1


class CheckpointError(KmtoolsError):
    """A checkpoint is missing, corrupt, untrusted or does not fit the architecture."""


class UntrustedCheckpointError(CheckpointError):
    """Loading would unpickle arbitrary objects; needs ``--trust-checkpoint``."""


class DataError(KmtoolsError):
    """A dataset is missing, empty or does not fit the model."""


class ConfigError(KmtoolsError):
    """An option value or combination is invalid."""


class DeviceError(KmtoolsError):
    """The requested device is not available."""


class OutputExistsError(KmtoolsError):
    """An output file exists and ``--force`` was not given."""


class GateError(KmtoolsError):
    """A ``--gate`` expression is malformed or names an unknown path (usage error)."""

    exit_code = 2
