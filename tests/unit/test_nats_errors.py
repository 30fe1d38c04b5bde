"""bus/nats_errors.py: every nats-py error leaves bus/ as one of the project's own."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from bus.nats_errors import jetstream_error, map_jetstream_errors, map_nats_errors
from schemas.errors import (
    AgenticPaymentsError,
    KeyNotFound,
    NoResponders,
    NotConnected,
    RequestTimeout,
    StoreFull,
    TransportError,
)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (nats.errors.NoRespondersError(), NoResponders),
        (nats.errors.TimeoutError(), RequestTimeout),
        (nats.errors.FlushTimeoutError(), RequestTimeout),
        (TimeoutError(), RequestTimeout),
        (nats.errors.ConnectionClosedError(), NotConnected),
        (nats.errors.ConnectionDrainingError(), NotConnected),
        (nats.errors.ConnectionReconnectingError(), NotConnected),
        (nats.errors.NoServersError(), NotConnected),
        (nats.errors.MaxPayloadError(), TransportError),
        (nats.errors.BadSubjectError(), TransportError),
        (nats.js.errors.ServiceUnavailableError(), TransportError),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else type(v).__name__,
)
def test_each_nats_error_maps_to_one_project_error(
    raised: Exception, expected: type[AgenticPaymentsError]
) -> None:
    with pytest.raises(expected) as info, map_nats_errors("ap.keys.get", service="key manager"):
        raise raised
    assert type(info.value) is expected
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_messages_name_the_service_subject_and_timeout() -> None:
    no_one = pytest.raises(NoResponders, match=r"key manager.*ap\.keys\.get")
    with no_one, map_nats_errors("ap.keys.get", service="key manager"):
        raise nats.errors.NoRespondersError
    late = pytest.raises(RequestTimeout, match=r"within 2\.5s")
    with late, map_nats_errors("ap.keys.get", service="key manager", timeout=2.5):
        raise nats.errors.TimeoutError


def test_project_errors_and_others_pass_through() -> None:
    with pytest.raises(KeyNotFound), map_nats_errors("ap.keys.get"):
        raise KeyNotFound("no key")
    with pytest.raises(ValueError), map_nats_errors("ap.keys.get"):
        raise ValueError("not ours to map")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (nats.js.errors.ServiceUnavailableError(), NotConnected),
        # a full store: nats-py raises the 503 class "no JetStream" also uses
        (nats.js.errors.ServiceUnavailableError(code=503, err_code=10023), StoreFull),
        (nats.js.errors.ServerError(code=500, err_code=10047), StoreFull),
        (nats.js.errors.ServiceUnavailableError(code=503, err_code=10039), NotConnected),
        (nats.errors.NoRespondersError(), NotConnected),
        (nats.errors.TimeoutError(), RequestTimeout),
        (TimeoutError(), RequestTimeout),
        (nats.errors.ConnectionClosedError(), NotConnected),
        (nats.errors.ConnectionReconnectingError(), NotConnected),
        (nats.js.errors.BadRequestError(), TransportError),
        (nats.js.errors.NotFoundError(), TransportError),
        (nats.errors.BadSubjectError(), TransportError),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else type(v).__name__,
)
def test_each_jetstream_error_maps_to_one_project_error(
    raised: Exception, expected: type[AgenticPaymentsError]
) -> None:
    with pytest.raises(expected) as info, map_jetstream_errors("opening bucket ap_state"):
        raise raised
    assert type(info.value) is expected
    assert str(info.value).startswith("opening bucket ap_state: ")
    assert info.value.__cause__ is raised  # the JetStream error code stays readable in the log
    assert jetstream_error(raised, "x").__class__ is expected


def test_a_full_store_says_so_not_that_jetstream_is_missing() -> None:
    full = pytest.raises(StoreFull, match="storage is full")
    with full, map_jetstream_errors("writing k"):
        raise nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10023, description="insufficient resources"
        )


def test_no_jetstream_says_what_to_do() -> None:
    no_js = pytest.raises(NotConnected, match="start nats-server with -js")
    with no_js, map_jetstream_errors("opening bucket ap_state"):
        raise nats.js.errors.ServiceUnavailableError


def test_jetstream_mapping_passes_others_through() -> None:
    with pytest.raises(KeyNotFound), map_jetstream_errors("reading k"):
        raise KeyNotFound("no key")
    with pytest.raises(ValueError), map_jetstream_errors("reading k"):
        raise ValueError("not ours to map")
    other = ValueError("a bug")
    assert jetstream_error(other, "x") is other
