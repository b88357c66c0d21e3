"""Index keys that hold secrets or gate reads: webhooks, webhook_secret, acl_pkg_read.

What is stored, what is answered (``***`` in place of every secret), and that
sending back what was answered keeps the real values.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devpid.private.events import Change
from devpid.private.indexconfig import (
    keep_hidden_password,
    new_index_config,
    patch_index_config,
    shown_webhook,
    visible_index,
)
from devpid.private.names import InvalidConfig

JENKINS = "http://ci:s3cret@localhost:8080/job/app/buildWithParameters?token=build-token&x"
SECRET = "0123456789abcdef-secret"


def _new(body: dict[str, Any]) -> dict[str, Any]:
    return new_index_config("alice", body, index_exists=lambda n: True, default_cache_expiry=60)


def _patch(current: dict[str, Any], body: object) -> dict[str, Any]:
    config = patch_index_config("alice/dev", "alice", current, body, index_exists=lambda n: True)
    return keep_hidden_password(current, config)


def test_secrets_are_stored_as_given_and_answered_hidden() -> None:
    config = _new({"webhooks": JENKINS, "webhook_secret": SECRET})
    assert config["webhooks"] == [JENKINS]
    assert config["webhook_secret"] == SECRET
    shown = visible_index(config)
    assert shown["webhook_secret"] == "***"
    assert shown["webhooks"] == [
        "http://ci:***@localhost:8080/job/app/buildWithParameters?token=***&x"
    ]
    assert "build-token" not in repr(shown) and "s3cret" not in repr(shown)
    assert SECRET not in repr(shown)


def test_sending_back_what_was_answered_keeps_the_secrets() -> None:
    config = _new({"webhooks": JENKINS, "webhook_secret": SECRET, "title": "t"})
    shown = visible_index(config)
    assert _patch(config, {"type": "indexconfig", "result": shown}) == config
    assert _patch(config, {**shown, "title": "new"}) == {**config, "title": "new"}


def test_hidden_secret_without_a_stored_one_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="not set"):
        _patch(_new({}), {"webhook_secret": "***"})


def test_webhooks_take_list_ops() -> None:
    config = _new({})
    config = _patch(config, ["webhooks+=http://localhost:9000/hook"])
    config = _patch(config, ["webhooks+=http://localhost:9000/hook"])  # idempotent
    assert config["webhooks"] == ["http://localhost:9000/hook"]
    config = _patch(config, ["webhooks-=http://localhost:9000/hook"])
    assert config["webhooks"] == []


def test_acl_pkg_read_starts_from_anonymous() -> None:
    config = _patch(_new({}), ["acl_pkg_read+=bob"])
    assert config["acl_pkg_read"] == [":ANONYMOUS:", "bob"]
    config = _patch(config, ["acl_pkg_read-=:anonymous:"])
    assert config["acl_pkg_read"] == ["bob"]
    mirror = new_index_config(
        "root",
        {"type": "mirror", "mirror_url": "http://localhost/simple/", "acl_pkg_read": "a,b"},
        index_exists=lambda n: True,
        default_cache_expiry=60,
    )
    assert mirror["acl_pkg_read"] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"webhooks": "ftp://localhost/x"}, "must be an http:// or https:// URL"),
        ({"webhooks": "http://"}, "must be an http:// or https:// URL"),
        ({"webhooks": "http://localhost:99999/"}, "must be an http:// or https:// URL"),
        ({"webhooks": ["http://localhost/a b"]}, "must be an http:// or https:// URL"),
        ({"webhooks": [f"http://localhost/{i}" for i in range(21)]}, "at most 20 webhooks"),
        ({"webhook_secret": "short"}, "16 to 256 printable characters"),
        ({"webhook_secret": "a secret with spaces"}, "16 to 256 printable characters"),
        ({"webhook_secret": 12345678901234567890}, "16 to 256 printable characters"),
    ],
)
def test_bad_values_get_one_line(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        _new(body)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_the_event_log_never_carries_the_secret() -> None:
    config = _new({"webhook_secret": SECRET})
    public = Change("index", "alice/dev", config).public()
    assert public["value"] is not None
    assert "webhook_secret" not in public["value"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_webhook_text_is_refused_or_shown_without_its_query_values(text: str) -> None:
    url = "http://localhost/h?token=" + text
    try:
        config = _new({"webhooks": [url]})
    except InvalidConfig as e:
        assert "\n" not in e.message
        return
    shown = shown_webhook(config["webhooks"][0])
    assert shown.startswith("http://localhost/h?token=***")
    assert _patch(config, {"webhooks": visible_index(config)["webhooks"]}) == config
