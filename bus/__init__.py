"""Transport and runtime: connection, subjects, tracing, worker lifecycle, client."""
