"""Keep the authority coordinator's part of ``schemas/asyncapi.yaml`` in step with the code."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from schemas import authority
from schemas.authority import (
    ALL_AUTHORITY_MESSAGES,
    DOMAIN_ENDORSEMENT,
    OPERATIONS,
    IgnoredReason,
    PolicyGroup,
    TrustLevel,
)
from tests.unit.test_asyncapi import CHANNELS, DOC, MESSAGES, resolve, schema_for
from tests.unit.test_asyncapi import OPERATIONS as DOC_OPS
from workers.authority.worker import AUTHORITY_QUEUE

CLASSES: tuple[type, ...] = (*ALL_AUTHORITY_MESSAGES, PolicyGroup)
LEVELS = [level.value for level in TrustLevel]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_schema_fields(cls: Any) -> None:
    schema = schema_for(cls)
    assert set(schema["properties"]) == set(cls.FIELDS)
    assert set(schema["required"]) == set(cls.FIELDS)  # every field is required
    if cls is not PolicyGroup:
        assert schema["properties"]["type"]["const"] == cls.TYPE


@pytest.mark.parametrize(
    ("schema", "field", "key", "expected"),
    [
        ("AuthorityRecord", "trust_level", "enum", LEVELS),
        ("AuthorityRecord", "name", "maxLength", authority.MAX_NAME),
        ("QuorumPolicy", "min_trust_level", "enum", LEVELS),
        ("QuorumPolicy", "groups", "maxItems", authority.MAX_GROUPS),
        ("QuorumPolicy", "min_authorities", "maximum", authority.MAX_MIN_AUTHORITIES),
        ("PolicyGroup", "min_trust_level", "enum", LEVELS),
        ("PolicyGroup", "members", "maxItems", authority.MAX_GROUP_MEMBERS),
        ("PolicyGroup", "k", "maximum", authority.MAX_GROUP_MEMBERS),
        ("EvaluateRequest", "endorsements", "maxItems", authority.MAX_ENDORSEMENTS),
        ("AuthorityChange", "endorsements", "maxItems", authority.MAX_ENDORSEMENTS),
        ("PolicyChange", "endorsements", "maxItems", authority.MAX_ENDORSEMENTS),
        ("EvaluateRequest", "message_digest", "x-bytes", authority.DIGEST_BYTES),
        ("AuthorityList", "authorities", "maxItems", authority.MAX_LISTED),
        ("AuthorityList", "policies", "maxItems", authority.MAX_LISTED),
    ],
)
def test_constants(schema: str, field: str, key: str, expected: Any) -> None:
    assert DOC["components"]["schemas"][schema]["properties"][field][key] == expected


def test_ignored_reasons() -> None:
    item = schema_for(authority.PolicyVerdict)["properties"]["ignored"]["items"]
    assert item["properties"]["reason"]["enum"] == [r.value for r in IgnoredReason]


def test_operations_channel_and_queue() -> None:
    assert DOC["components"]["parameters"]["authority_op"]["enum"] == list(OPERATIONS)
    requests = {
        resolve(m["$ref"])["payload"]["$ref"].rsplit("/", 1)[1]
        for m in CHANNELS["authority"]["messages"].values()
    }
    assert requests == {cls.__name__ for cls in OPERATIONS.values()}
    replies = {
        resolve(m["$ref"])["payload"]["$ref"].rsplit("/", 1)[1]
        for m in CHANNELS["authorityReply"]["messages"].values()
    }
    assert replies == {
        "AuthorityRecord",
        "QuorumPolicy",
        "AuthorityList",
        "PolicyVerdict",
        "ErrorReply",
    }
    assert DOC_OPS["authority"]["bindings"]["nats"]["queue"] == AUTHORITY_QUEUE


@pytest.mark.parametrize("cls", ALL_AUTHORITY_MESSAGES, ids=lambda c: c.__name__)
def test_message_limits(cls: Any) -> None:
    message = MESSAGES[cls.__name__]
    assert message["name"] == cls.TYPE
    assert DOC["x-codec-limits"][message["x-codec-limits"]] == dataclasses.asdict(cls.LIMITS)


def test_endorsement_domain() -> None:
    domain = DOC["x-signing"]["domains"]["endorsement"]
    assert bytes.fromhex(domain["hex"]) == DOMAIN_ENDORSEMENT
    assert domain["text"].replace("\\0", "\0").encode() == DOMAIN_ENDORSEMENT
