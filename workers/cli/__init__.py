"""The ``agentic-payments`` command line: entry point (``main``) and the operator
commands that belong to no single worker kind."""
