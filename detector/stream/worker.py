"""Running ``detector worker``: topics first, then the Faust worker, with a bounded stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.config
import os
import signal
import threading
from typing import Any

import faust

from detector.stream.app import create_app, topic_specs
from detector.stream.logs import logging_config
from detector.stream.settings import Settings
from detector.topics import TopicMismatchError, TopicSpec, create_topics

log = logging.getLogger(__name__)

EXIT_SHUTDOWN_TIMEOUT = 3


class GuardedWorker(faust.Worker):
    """A Faust worker whose stop is bounded: Faust can hang in shutdown after an agent
    crash loop, so a signal also arms a timer that ends the process regardless."""

    def __init__(self, *args: Any, shutdown_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_timeout = shutdown_timeout

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if not getattr(self, "_guard_armed", False):
            self._guard_armed = True
            timer = threading.Timer(self.shutdown_timeout, _force_exit, (self.shutdown_timeout,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signum)


def _force_exit(timeout: float) -> None:
    log.critical("shutdown did not finish; exiting", extra={"timeout_seconds": timeout})
    logging.shutdown()
    os._exit(EXIT_SHUTDOWN_TIMEOUT)


async def ensure_topics(settings: Settings) -> int:
    """Create (or check) every topic; returns the input topic's partition count."""
    s = settings
    options = s.kafka_security()
    partitions = s.input_partitions
    try:
        await create_topics(
            s.bootstrap, [TopicSpec(s.topic_actions, partitions)], client_options=options
        )
    except TopicMismatchError as exc:
        if exc.what != "the partition count" or not isinstance(exc.found, int):
            raise
        partitions = exc.found  # an existing input topic decides
    await create_topics(s.bootstrap, topic_specs(s, partitions)[1:], client_options=options)
    return partitions


def run_worker(settings: Settings) -> int:
    """Run the worker until SIGTERM or SIGINT; returns the exit code."""
    config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(config)
    if settings.create_topics:
        partitions = asyncio.run(ensure_topics(settings))
        log.info("topics ready", extra={"input_partitions": partitions})
    daemon = create_app(settings)
    # The hot path allocates many short-lived objects per event; the modules and the app
    # built so far live as long as the process. Keep them out of every collection, and
    # collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 50)
    worker = GuardedWorker(
        daemon.app,
        loglevel=settings.log_level,
        logging_config=config,
        quiet=True,
        redirect_stdouts=False,
        shutdown_timeout=settings.shutdown_timeout,
        loop=asyncio.new_event_loop(),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
