"""Exceptions of the experiment router: one root, narrow subclasses."""

from __future__ import annotations


class RouterError(Exception):
    """Root of every error the experiment router raises."""


class ModelCheckUnavailable(RouterError):
    """A ``model_exists`` check could not be answered now (the service that knows is unreachable).

    Raised by the check itself; a hot reload keeps the previous config and tries the new file again at the
    next poll instead of rejecting it.
    """


class ConfigError(RouterError, ValueError):
    """An experiment config file is invalid; names the file, experiment key, field path and line.

    Args:
        message: what is wrong and what is allowed.
        file: path of the config file, if known.
        experiment: key of the experiment the error belongs to, if any.
        field: dotted path of the offending field inside the file.
        line: 1-based line number where YAML/JSON gives one.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        experiment: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.experiment = experiment
        self.field = field
        self.line = line
        super().__init__(self.describe())

    def describe(self) -> str:
        """One human-readable line: `file:line: experiment 'k': field: message`."""
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.experiment:
            parts.append(f"experiment {self.experiment!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + f": {self.message}"


class ConfigErrors(ConfigError):
    """Several config problems found in one pass; `errors` lists each of them."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(
            first.message, file=first.file, experiment=first.experiment, field=first.field, line=first.line
        )

    def describe(self) -> str:
        """Every problem, one `file:line: ...` line each."""
        return "\n".join(e.describe() for e in self.errors)


class UnknownOperatorError(RouterError, ValueError):
    """A targeting condition uses an operator this router does not know, or is malformed.

    Args:
        reason: what is wrong and what is allowed.
        keys: path of the offending entry inside the condition (keys and list indexes), to find its line.
    """

    def __init__(self, reason: str, keys: tuple[str | int, ...] = ()) -> None:
        self.reason = reason
        self.keys = keys
        where = "condition" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)
        super().__init__(f"{where}: {reason}")


class RegexError(RouterError, ValueError):
    """A condition's regular expression is not one JavaScript reads the same way (see jsregex)."""
