"""``detector demo``: the product doing its job on one machine, in one command.

The package is split by concern:

- :mod:`.scenario` — the demo platform and its incident, in event time (pure);
- :mod:`.traffic` — the simulated enforcement service: events minute by minute,
  the gate it honours, and the ground truth of what was applied (pure);
- :mod:`.outcome` — what the detector published, folded into the story's facts,
  and the ledger check against the ground truth (pure);
- :mod:`.processes` — the child processes (worker, Prometheus, Alertmanager),
  started and stopped by PID;
- :mod:`.kafka` — producing traffic and commands, following the output topics;
- :mod:`.alerting` — ``--with-prometheus``: configs and the local webhook;
- :mod:`.view` — the live terminal view and the headless plain lines;
- :mod:`.report` — the ledger CSV, the PNG timeline and the summary;
- :mod:`.runner` — the story, from start to a clean stop.
"""
