# agentic-payments tasks (`pip install rust-just` provides `just`)

default:
    @just --list

# install the package and dev tools into the current environment
install:
    python -m pip install -e '.[dev]'

# start NATS (if none answers at NATS_URL), a tally and 4 verifiers; Ctrl-C stops all
up *ARGS:
    agentic-payments up {{ARGS}}

# run the usage example against a running system
demo:
    agentic-payments demo

# the whole test suite (unit, integration, end-to-end) against a real nats-server
test *ARGS:
    python -m pytest {{ARGS}}

# fast pure-logic tests only
unit:
    python -m pytest tests/unit -q

# consensus throughput/latency benchmark; prints JSON
bench *ARGS:
    python bench/consensus.py {{ARGS}}

lint:
    ruff check .
    ruff format --check .
    lint-imports
    mypy

# what CI runs, from a fresh venv
ci:
    bash .ci/run
