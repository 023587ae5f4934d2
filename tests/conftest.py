"""Shared fixtures: one embedded broker per test session, and unique topics per test.

Usage::

    pytestmark = pytest.mark.broker

    async def test_something(broker: EmbeddedBroker, new_topic: NewTopicFn) -> None:
        topic = await new_topic(partitions=8, config={"cleanup.policy": "compact"})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)

Tests that pause, stop or otherwise break a broker use ``fresh_broker`` (one
per test) so that the session broker stays healthy for the others.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Awaitable, Iterator, Mapping
from typing import Protocol

import pytest
from hypothesis import settings

from detector.broker import EmbeddedBroker
from detector.topics import TopicSpec, create_topics

# Property tests draw the same examples on every run of the test command (a red build
# is then reproducible, and not a matter of luck); HYPOTHESIS_PROFILE=explore draws new
# ones, to hunt for edge cases.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

BROKER_FIXTURES = {"broker", "fresh_broker", "new_topic"}


class NewTopicFn(Protocol):
    """Signature of the ``new_topic`` fixture's value."""

    def __call__(
        self, partitions: int = 1, config: Mapping[str, str] | None = None, label: str = ""
    ) -> Awaitable[str]: ...


def unique_topic_name(label: str) -> str:
    """A topic name no other test (or earlier run on the same broker) uses."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")[:100] or "topic"
    return f"{clean}-{uuid.uuid4().hex[:10]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture with ``broker``, even if unmarked,
    so that ``-m 'not broker'`` reliably runs without one."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The session's broker; stopped by PID at the end, whatever happened.

    Memory storage: topics from earlier tests stay until the session ends, so
    tests create their own uniquely named topics (``new_topic``).
    """
    instance = EmbeddedBroker().start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, for tests that pause, stop or kill it."""
    instance = EmbeddedBroker().start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def new_topic(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> NewTopicFn:
    """``await new_topic(partitions=8, config={...})`` creates a topic on the
    session broker, named after the test, and returns its name."""

    async def make(
        partitions: int = 1, config: Mapping[str, str] | None = None, label: str = ""
    ) -> str:
        name = unique_topic_name(f"{request.node.name}-{label}" if label else request.node.name)
        await create_topics(broker.bootstrap, [TopicSpec(name, partitions, dict(config or {}))])
        return name

    return make
