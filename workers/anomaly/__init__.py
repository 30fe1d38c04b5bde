"""Anomaly worker: the process (``worker``), rolling baselines (``baseline``, pure),
Byzantine-verifier rules (``byzantine_rules``, pure) and its commands (``cli``)."""
