"""Domain errors shared by every service; one interceptor maps them to gRPC status codes."""


class RlfleetError(Exception):
    """Base class of errors that carry a meaning the caller can act on."""


class InvalidRequest(RlfleetError, ValueError):
    """The request is malformed; the message names the offending field (-> INVALID_ARGUMENT)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class NotReady(RlfleetError):
    """The service cannot answer yet or any more (loading, draining, dependency down) -> UNAVAILABLE."""


class Overloaded(RlfleetError):
    """A bounded queue is full; the caller should back off and retry -> RESOURCE_EXHAUSTED."""


class NotFound(RlfleetError):
    """The thing asked for does not exist (e.g. an adapter version no longer loaded) -> NOT_FOUND."""


class Rejected(RlfleetError):
    """A well-formed request that the service's state refuses (e.g. a mismatched adapter) -> FAILED_PRECONDITION."""
