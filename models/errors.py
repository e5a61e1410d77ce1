"""The root exception of the ``models`` package and its specific kinds."""

from __future__ import annotations


class ModelsError(Exception):
    """Root of every error the models package raises on purpose."""


class DataError(ModelsError):
    """A data file is missing, malformed or fails its checksum."""


class PackageError(ModelsError):
    """A model package is incomplete, inconsistent or fails its checksums or golden parity."""
