"""Over-enforcement detector: pauses trust-and-safety rules whose deactivation rate deviates
sharply from their own baseline."""

__version__ = "0.1.0"
