"""Authority coordinator: the service process (``worker``), quorum policy
evaluation (``policy``, pure) and its commands (``cli``)."""
