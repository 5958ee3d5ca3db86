"""TruthGuard's validation engine."""
