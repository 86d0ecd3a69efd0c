"""One exception family for every user-facing failure; the CLI turns it into one line and an exit code."""

from __future__ import annotations


class CdxError(Exception):
    """An error the user can act on. `str(err)` is the whole message, one line."""

    exit_code = 1


class InputError(CdxError):
    """Bad user input: a missing folder, an unknown option, an existing output path."""


class ManifestError(CdxError):
    """A manifest that fails its schema or does not match the files beside it."""


class ChecksumError(ManifestError):
    """A file whose sha256 differs from the one recorded in its manifest."""


class ConversionError(CdxError):
    """A converter refused the model (an op a target cannot take, a failed export)."""


class ParityError(CdxError):
    """An artifact whose outputs drift too far from the float model."""


class UnsupportedError(CdxError):
    """Something that cannot run on this machine or is not built yet."""

    exit_code = 2


class RegressionError(CdxError):
    """`cdx bench --compare` found a row slower or drifted past the user's thresholds."""

    exit_code = 3
