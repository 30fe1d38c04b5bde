"""Key manager: the service process (``worker``), sealed seeds (``crypto``), the
lifecycle table (``lifecycle``, pure) and its commands (``cli``)."""
