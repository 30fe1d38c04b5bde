"""The ``agentic-payments`` command line.

``main`` is the entry point (parser skeleton, registering modules, exit codes);
``kit`` the shared options every command module builds on; ``client`` the
agent's commands (keygen, sign, verify, demo); ``operator`` members, status and
check; ``up`` the whole system on one machine; ``trace``, ``nats_config`` and
``admit`` one command each. Each worker package registers its own commands from
its ``cli`` module (workers/consensus/cli.py, workers/keys/cli.py, ...)."""
