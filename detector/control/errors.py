"""Errors of the operator tooling, each with the exit code ``detector ctl`` returns.

=====  ===========================================================================
code   meaning
=====  ===========================================================================
0      done
2      bad usage or configuration (an option, a missing key, a missing topic)
3      the broker did not answer in time
4      not found (unknown trip, no state or history for the rule)
5      the detector rejected the command (``--wait``)
6      the detector did not answer the command in time (``--wait``)
=====  ===========================================================================
"""

from __future__ import annotations

from detector.errors import DetectorError


class ControlError(DetectorError):
    """Root of the operator tooling's errors; ``exit_code`` is the process exit code."""

    exit_code = 2


class TopicMissingError(ControlError):
    """A control topic does not exist (wrong name, or the worker never created it)."""

    def __init__(self, topic: str, setting: str) -> None:
        self.topic = topic
        super().__init__(
            f"topic {topic!r} does not exist (set {setting} if it is named otherwise; "
            "the worker creates it on start)"
        )


class BrokerUnreachableError(ControlError):
    """The broker did not answer within the timeout."""

    exit_code = 3


class NotFoundError(ControlError):
    """What was asked for is not in the topic (a trip, a rule)."""

    exit_code = 4


class CommandRejectedError(ControlError):
    """The detector audited the command as rejected."""

    exit_code = 5


class NoAnswerError(ControlError):
    """The detector did not audit the command within the wait."""

    exit_code = 6
