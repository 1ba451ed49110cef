"""Every exception the system raises on purpose, named for what happened.

HTTP answers are ``errors.ApiError``; these are the situations behind them, raised by the domain,
the services and the adapters, and caught where a decision is made:

    >>> try:
    ...     raise ConditionFailed("dispatch r-1 is not in ['pending']")
    ... except NeptingError as exc:
    ...     str(exc)
    "dispatch r-1 is not in ['pending']"
"""

from __future__ import annotations


class NeptingError(Exception):
    """Base of every exception below."""


class ConfigurationError(NeptingError, ValueError):
    """A setting is missing or invalid; the message names the setting."""


class ConditionFailed(NeptingError):
    """A conditional write lost: the item was not in the state the write required."""


class ChannelError(NeptingError):
    """The message could not be handed to the terminal's broker."""


class EnvelopeError(NeptingError, ValueError):
    """A message is not an envelope of the terminal protocol; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventRefused(NeptingError):
    """A terminal message that must not move anything; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class TerminalBusyError(NeptingError):
    """Another payment holds the terminal's claim."""


class DispatchMissingError(NeptingError, LookupError):
    """An order head points at a correlation record that does not exist: storage lost a write."""


class EnrollmentError(NeptingError, ValueError):
    """A merchant or terminal cannot be enrolled as asked; the message says why."""


class IpnMissingError(NeptingError, LookupError):
    """A queued reference has no stored IPN: the route stores before it enqueues, so this is a bug."""


class TransactionMissingError(NeptingError, LookupError):
    """A merge without an IPN found no transaction to apply the order's details to."""


class JsonLimitError(NeptingError, ValueError):
    """A JSON text past one of the parsing limits (depth, number size, lone surrogates).

    ``path`` is the dotted path of the offending value (empty for the document itself); ``reason``
    is a stable metric label."""

    def __init__(self, reason: str, message: str, path: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


class RecordRefused(NeptingError):
    """A queue or stream record that cannot be read as the message it should be; retrying it would
    never help. ``reason`` is a stable metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
