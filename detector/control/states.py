"""The latest state of every rule, folded from the rule-state topic (pure).

``detector ctl status`` and the enforcement-side gate (:mod:`detector.gate`) read the
topic by the same rules, defined here once:

- a message replaces the one held for its rule only when its ``version`` is higher:
  the topic is compacted and keyed by rule, but a reader can still meet an older
  state after a newer one (a republished message, a compaction that has not run);
- a tombstone (a message without a value) forgets the rule;
- a message that breaks the contract raises :class:`~detector.errors.ContractError`
  and changes nothing: the caller counts it.

What a rule's decisions may do combines its own gate with the global rule ``*``:
the stricter of the two wins (``hold`` over ``shadow`` over ``allow``), so a global
halt holds every rule and a global probe runs every allowed rule in shadow.
"""

from __future__ import annotations

from dataclasses import dataclass

from detector.engine.breaker import Gate
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.rulestate import RuleStateMessage

Decision = Gate
"""What an enforcement service may do with a rule's decision: ``allow``, ``hold``, ``shadow``."""


@dataclass(frozen=True)
class Change:
    """A rule's gate changed (``None``: the rule was not known, or was forgotten)."""

    rule_id: str
    before: Gate | None
    after: Gate | None
    message: RuleStateMessage | None


_SEVERITY: dict[Gate, int] = {Gate.ALLOW: 0, Gate.SHADOW: 1, Gate.HOLD: 2}


def stricter(a: Gate, b: Gate) -> Gate:
    """The stricter of two gates: ``hold`` over ``shadow`` over ``allow``."""
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


class RuleStates:
    """The latest :class:`RuleStateMessage` of every rule, and the gate it implies.

    The decision of every rule with a state is kept ready in :attr:`effective` (its own
    gate made stricter by the global one) and :attr:`default` is the decision for every
    other rule (the global gate), so that :meth:`decide` is one dictionary lookup.
    Readers on other threads may call :meth:`decide` while messages are applied: the
    dictionary is only ever updated entry by entry, never emptied.
    """

    def __init__(self) -> None:
        self.messages: dict[str, RuleStateMessage] = {}
        self._own: dict[str, Gate] = {}
        self.effective: dict[str, Gate] = {}
        self.default: Gate = Gate.ALLOW
        """The decision for a rule without a state: the global gate."""

    @property
    def global_gate(self) -> Gate:
        """The gate of rule ``*`` (``allow`` when it has no state)."""
        return self.default

    def apply(self, key: bytes | None, value: bytes | None) -> Change | None:
        """Fold one message; returns what changed, or ``None`` if nothing did.

        Raises :class:`~detector.errors.ContractError` for a value that is not a rule
        state, leaving the held states as they were.
        """
        if value is None:
            if key is None:
                return None
            return self._forget(key.decode("utf-8", "replace"))
        msg = RuleStateMessage.from_json(value)
        held = self.messages.get(msg.rule_id)
        if held is not None and msg.version <= held.version:
            return None
        gate = Gate(msg.gate)
        self.messages[msg.rule_id] = msg
        before = self._own.get(msg.rule_id)
        self._own[msg.rule_id] = gate
        if msg.rule_id == GLOBAL_RULE_ID:
            self._set_global(gate)
        else:
            self.effective[msg.rule_id] = stricter(gate, self.default)
        return Change(msg.rule_id, before, gate, msg)

    def _forget(self, rule_id: str) -> Change | None:
        held = self.messages.pop(rule_id, None)
        if held is None:
            return None
        before = self._own.pop(rule_id)
        if rule_id == GLOBAL_RULE_ID:
            self._set_global(Gate.ALLOW)
        else:
            self.effective.pop(rule_id, None)
        return Change(rule_id, before, None, None)

    def _set_global(self, gate: Gate) -> None:
        self.default = gate
        self.effective[GLOBAL_RULE_ID] = gate
        for rule_id, own in self._own.items():
            if rule_id != GLOBAL_RULE_ID:
                self.effective[rule_id] = stricter(own, gate)
        if gate is Gate.ALLOW and GLOBAL_RULE_ID not in self._own:
            self.effective.pop(GLOBAL_RULE_ID, None)

    def decide(self, rule_id: str) -> Decision:
        """The gate for ``rule_id``'s decisions: its own, made stricter by the global one.

        A rule without a state gets the global gate (``allow`` unless halted).
        """
        return self.effective.get(rule_id, self.default)

    def own_gate(self, rule_id: str) -> Gate | None:
        """The rule's own gate, without the global one (``None``: no state)."""
        return self._own.get(rule_id)

    def __len__(self) -> int:
        return len(self.messages)
