"""The streaming daemon: the engine on Kafka, with Faust (see :mod:`detector.stream.app`)."""
