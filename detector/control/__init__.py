"""The operator's side of the control plane.

- :mod:`detector.control.states` — the latest state of every rule, folded from the
  rule-state topic (pure; shared by ``detector ctl status`` and :mod:`detector.gate`).
- :mod:`detector.control.views` — the audit history of a rule, the affected-accounts
  ledger of a trip and the reinstatement plan (pure).
- :mod:`detector.control.topicio` — reading the control topics to their end and
  writing to them, with timeouts (the edge: the only module here that talks to Kafka).
- :mod:`detector.control.render` — tables for people, JSON for scripts.
- :mod:`detector.control.errors` — what goes wrong, each with its exit code.

The command lines are in :mod:`detector.commands.ctl` and :mod:`detector.commands.affected`.
"""
