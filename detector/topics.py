"""Topics the detector needs, created (or checked) before any client touches them.

Against the embedded broker this matters: tansu auto-creates an unknown topic
with 4 partitions as soon as any client asks for its metadata (aiokafka's
``describe_topics`` included), so :func:`create_topics` sends CreateTopics
first and only describes topics that already exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from detector.errors import ConfigError, DetectorError

_TOPIC_ALREADY_EXISTS = 36


class TopicError(DetectorError):
    """CreateTopics failed, or a topic exists in a shape the detector cannot use."""


class TopicMismatchError(TopicError):
    """A topic already exists with other partitions or config than were asked for."""

    def __init__(
        self, topic: str, what: str, wanted: object, found: object, hint: str = ""
    ) -> None:
        self.topic = topic
        self.what = what
        self.wanted = wanted
        self.found = found
        super().__init__(f"topic {topic!r}: {what} is {found!r}, wanted {wanted!r}{hint}")


_AUTO_CREATED_HINT = " (auto-created by a client before create_topics ran?)"
_AUTO_PARTITIONS = 4


@dataclass(frozen=True)
class TopicSpec:
    """A topic as our code needs it: name, partition count, topic configs.

    tansu has a single node, so the replication factor is always 1.
    """

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 249:
            raise ConfigError("topic.name", "must be 1 to 249 characters", self.name)
        # tansu accepts 0 partitions without complaint; a topic nobody can write to.
        if self.partitions < 1:
            raise ConfigError(f"topic {self.name!r}.partitions", "must be >= 1", self.partitions)
        for key, value in self.config.items():
            if not isinstance(value, str):
                raise ConfigError(f"topic {self.name!r}.config[{key!r}]", "must be a str", value)


async def create_topics(
    bootstrap: str | list[str],
    specs: Iterable[TopicSpec],
    *,
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics, or check that they already exist as specified.

    Returns the names that were newly created. A topic that exists with another
    partition count, or without one of the asked configs, raises
    :class:`TopicMismatchError` (tansu reports only configs that were set
    explicitly, so an auto-created topic fails a config check). Call this before
    any client touches the topics: tansu auto-creates unknown topics with 4
    partitions.
    """
    wanted = list(specs)
    names = [s.name for s in wanted]
    if len(set(names)) != len(names):
        raise ConfigError("topics", "names must be unique", names)
    if not wanted:
        return []
    timeout_ms = int(timeout_s * 1000)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **(client_options or {})
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.config)) for s in wanted],
            timeout_ms=timeout_ms,
        )
        created: list[str] = []
        existing: list[TopicSpec] = []
        by_name = {s.name: s for s in wanted}
        for entry in response.to_object()["topic_errors"]:
            name, code = entry["topic"], entry["error_code"]
            if code == 0:
                created.append(name)
            elif code == _TOPIC_ALREADY_EXISTS:
                existing.append(by_name[name])
            else:
                error = for_code(code)
                detail = entry.get("error_message") or error.description
                raise TopicError(f"topic {name!r}: CreateTopics failed: {error.__name__} {detail}")
        if existing:
            await _check_existing(admin, existing)
        return created
    finally:
        await admin.close()


async def _check_existing(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    # Safe to describe: these topics exist, so describing does not auto-create them.
    described = await admin.describe_topics([s.name for s in specs])
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    for spec in specs:
        found = partitions.get(spec.name)
        if found != spec.partitions:
            hint = _AUTO_CREATED_HINT if found == _AUTO_PARTITIONS else ""
            raise TopicMismatchError(spec.name, "the partition count", spec.partitions, found, hint)
    with_config = [s for s in specs if s.config]
    if not with_config:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in with_config]
    configs: dict[str, dict[str, Any]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            entries = resource["config_entries"]
            configs[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in entries
            }
    for spec in with_config:
        actual = configs.get(spec.name, {})
        for key, value in spec.config.items():
            found_value = actual.get(key)
            if found_value != value:
                hint = _AUTO_CREATED_HINT if found_value is None else ""
                raise TopicMismatchError(spec.name, f"config {key!r}", value, found_value, hint)


async def read_to_end(
    consumer: Any,
    tps: list[Any],
    on_message: Callable[[Any], None],
    *,
    timeout_s: float = 30.0,
    poll_ms: int = 300,
) -> None:
    """Read the assigned partitions ``tps`` from their positions to their current ends.

    The end is the highwater a fetch reported: tansu's ``end_offsets`` under-counts
    (it answers with the last batch's base offset + 1), and before the first fetch
    completes the highwater is unknown, not zero.
    """
    pending = set(tps)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TopicError(f"could not read {sorted(str(tp) for tp in pending)} to the end")
        got = await consumer.getmany(*pending, timeout_ms=poll_ms)
        for msgs in got.values():
            for msg in msgs:
                on_message(msg)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if not got.get(tp) and high is not None and await consumer.position(tp) >= high:
                pending.discard(tp)
