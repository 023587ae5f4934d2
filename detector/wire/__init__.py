"""Every wire format the detector reads or writes, in one place.

- :mod:`detector.wire.events` — enforcement actions (the product's input contract).
- :mod:`detector.wire.records` — transitions and alerts (with evidence).
- :mod:`detector.wire.jsonobj` — one JSON object off the wire, with the contract's errors.
- :mod:`detector.wire.timefmt` — RFC 3339 / epoch time conversion.
"""
