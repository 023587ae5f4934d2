"""The pure detection engine: no Kafka, no clock, no I/O.

Start with :class:`detector.engine.core.Engine`.
"""
