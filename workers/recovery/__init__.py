"""Recovery: the process (``worker``), the pure staleness tracker and retry policy
(``staleness``), respawn backends (``backends``), the local supervisor behind
``up`` (``supervisor``) and its commands (``cli``)."""
