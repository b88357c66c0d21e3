"""Names, user and index configuration as devpi accepts them (devpi-api.md 0.6, 3, 4.1-4.2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devpid.private.indexconfig import (
    MIRROR,
    STAGE,
    new_index_config,
    parse_bool,
    patch_index_config,
)
from devpid.private.names import (
    InvalidConfig,
    check_index_name,
    check_user_name,
    normalize_project,
)
from devpid.private.userconfig import (
    USER_FIELDS,
    NewUser,
    UserChange,
    parse_new_user,
    parse_user_patch,
    visible_user,
)

EXISTING = frozenset({"root/pypi", "alice/dev", "bob/prod"})
ARGON2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def refused(function: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidConfig) as info:
        function(*args, **kwargs)
    message = info.value.args[0]
    assert "\n" not in message
    return str(message)


def new(body: object, owner: str = "alice") -> dict[str, Any]:
    return new_index_config(
        owner, body, index_exists=EXISTING.__contains__, default_cache_expiry=1800
    )


def patch(current: dict[str, Any], body: object, name: str = "alice/dev") -> dict[str, Any]:
    return patch_index_config(
        name, name.partition("/")[0], current, body, index_exists=EXISTING.__contains__
    )


def stage() -> dict[str, Any]:
    return new({})


def mirror() -> dict[str, Any]:
    return new({"type": "mirror", "mirror_url": "http://localhost:3141/simple/"})


# -- names ------------------------------------------------------------------------------


class TestNames:
    def test_devpis_message_for_blocked_characters(self) -> None:
        assert refused(check_user_name, "ca rol") == (
            "username 'ca rol' contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked."
        )
        assert refused(check_index_name, "de:v") == (
            "indexname 'de:v' contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked."
        )

    @pytest.mark.parametrize("char", list("!\"#$%&'()*+,/:;<=>?[\\]^`{|}~ \t\x00\x1f\x7f"))
    def test_every_blocked_character(self, char: str) -> None:
        assert "contains characters" in refused(check_user_name, f"a{char}b")

    @pytest.mark.parametrize("name", ["alice", "a.b-c@d_e", "Root2", "ünï", "x" * 100])
    def test_allowed(self, name: str) -> None:
        check_user_name(name)
        check_index_name(name)

    def test_empty_long_and_dot_names(self) -> None:
        assert refused(check_user_name, "") == "username must not be empty"
        assert "longer than 100" in refused(check_index_name, "x" * 101)
        assert len(refused(check_index_name, "x" * 10_000)) < 200
        assert refused(check_user_name, "..") == "username '..' is not allowed"
        assert refused(check_index_name, ".") == "indexname '.' is not allowed"

    def test_control_characters_stay_on_one_line(self) -> None:
        assert refused(check_user_name, "a\nb").startswith("username 'a\\nb' contains")

    @pytest.mark.parametrize(
        ("name", "normal"),
        [("foo+bar", "foo-bar"), ("Hello_World", "hello-world"), ("a..b__c", "a-b-c")],
    )
    def test_normalize_project(self, name: str, normal: str) -> None:
        assert normalize_project(name) == normal


# -- users -------------------------------------------------------------------------------


class TestNewUser:
    def test_password_and_fields(self) -> None:
        body = {
            "password": "secret",
            "email": "alice@localhost",
            "title": "",
            "custom_data": {"a": [1]},
        }
        user = parse_new_user(body)
        assert user == NewUser(
            password="secret",
            pwhash=None,
            fields={"email": "alice@localhost", "custom_data": {"a": [1]}},
        )
        body["custom_data"]["a"].append(2)  # type: ignore[index]
        assert user.fields["custom_data"] == {"a": [1]}

    def test_password_needs_to_be_set_even_with_pwhash(self) -> None:
        assert refused(parse_new_user, {}) == "password needs to be set"
        assert refused(parse_new_user, {"pwhash": ARGON2}) == "password needs to be set"
        # checked before the keys, as devpi does
        assert refused(parse_new_user, {"foo": 1}) == "password needs to be set"

    def test_unknown_keys_sorted(self) -> None:
        body = {"password": "p", "zeta": 1, "foo": 2}
        assert refused(parse_new_user, body) == "Unknown keys in user config: foo, zeta"

    def test_computed_keys_ignored(self) -> None:
        body = {"password": "p", "indexes": {"dev": {}}, "username": "x", "created": "c"}
        assert parse_new_user({**body, "modified": "m"}).fields == {}

    def test_not_an_object(self) -> None:
        assert refused(parse_new_user, ["password"]) == "user config must be a JSON object"

    def test_password_must_be_a_string(self) -> None:
        assert refused(parse_new_user, {"password": 5}) == "password must be a string"
        assert refused(parse_new_user, {"password": None}) == "password must be a string"

    def test_pwhash_wins(self) -> None:
        user = parse_new_user({"password": "p", "pwhash": ARGON2})
        assert (user.password, user.pwhash) == (None, ARGON2)
        assert parse_new_user({"password": None, "pwhash": ARGON2}).pwhash == ARGON2
        assert "argon2" in refused(parse_new_user, {"password": "p", "pwhash": "md5:abc"})


class TestUserPatch:
    def test_client_full_dict_patch(self) -> None:
        change = parse_user_patch(
            {"email": "alice2@localhost", "created": "2026-12-04T00:20:31Z", "bogus": 1}
        )
        assert change == UserChange(None, None, {"email": "alice2@localhost"}, ())
        assert not change.only_password

    def test_falsy_values_remove(self) -> None:
        change = parse_user_patch({"title": "", "custom_data": None, "description": "d"})
        assert change.set_fields == {"description": "d"}
        assert change.removed_fields == ("title", "custom_data")

    def test_only_password(self) -> None:
        assert parse_user_patch({"password": "new"}).only_password
        assert parse_user_patch({"pwhash": ARGON2, "modified": "x"}).only_password
        assert not parse_user_patch({"password": "new", "email": "e@localhost"}).only_password
        assert not parse_user_patch({}).only_password
        assert not parse_user_patch({"password": None}).only_password

    def test_refusals(self) -> None:
        assert refused(parse_user_patch, "x") == "user config must be a JSON object"
        assert refused(parse_user_patch, {"password": 1}) == "password must be a string"


def test_visible_user_hides_secrets() -> None:
    stored = {
        "pwhash": ARGON2,
        "pwsalt": "salt",
        "email": "a@localhost",
        "created": "2026-12-04T00:20:31Z",
    }
    indexes = {"dev": {"type": STAGE, "bases": ["root/pypi"]}}
    visible = visible_user("alice", stored, indexes)
    assert visible == {
        "email": "a@localhost",
        "created": "2026-12-04T00:20:31Z",
        "username": "alice",
        "indexes": {"dev": {"type": STAGE, "bases": ["root/pypi"]}},
    }
    visible["indexes"]["dev"]["bases"].append("x")
    assert indexes["dev"]["bases"] == ["root/pypi"]


def test_user_fields() -> None:
    assert USER_FIELDS == ("email", "title", "description", "custom_data")


# -- new indexes ---------------------------------------------------------------------------


class TestNewIndex:
    def test_stage_defaults(self) -> None:
        assert new({}) == {
            "type": STAGE,
            "volatile": True,
            "bases": [],
            "acl_upload": ["alice"],
            "acl_toxresult_upload": [":ANONYMOUS:"],
            "mirror_whitelist": [],
            "mirror_whitelist_inheritance": "intersection",
        }

    def test_mirror_defaults(self) -> None:
        assert new({"type": "mirror"}) == {
            "type": MIRROR,
            "volatile": True,
            "mirror_cache_expiry": 1800,
        }

    def test_client_strings(self) -> None:
        config = new({"bases": "root/pypi", "volatile": "False", "title": "Dev"})
        assert config["bases"] == ["root/pypi"]
        assert config["volatile"] is False
        assert config["title"] == "Dev"
        config = new(
            {
                "type": "mirror",
                "mirror_url": "https://localhost/simple/",
                "mirror_cache_expiry": "0",
                "volatile": "no",
                "mirror_no_project_list": "YES",
                "mirror_use_external_urls": "true",
            }
        )
        assert config == {
            "type": MIRROR,
            "volatile": False,
            "mirror_url": "https://localhost/simple/",
            "mirror_cache_expiry": 0,
            "mirror_no_project_list": True,
            "mirror_use_external_urls": True,
        }

    def test_comma_lists_and_empty(self) -> None:
        config = new({"bases": " root/pypi , bob/prod,", "acl_toxresult_upload": ""})
        assert config["bases"] == ["root/pypi", "bob/prod"]
        assert config["acl_toxresult_upload"] == []
        assert new({"bases": ""})["bases"] == []
        assert new({"bases": ["bob/prod", "root/pypi"]})["bases"] == ["bob/prod", "root/pypi"]
        assert new({"bases": "/root/pypi/"})["bases"] == ["root/pypi"]

    def test_base_errors_joined_in_order(self) -> None:
        assert refused(new, {"bases": "not/exists,/root/dev/123,bad,root/pypi"}) == (
            "base index 'not/exists' does not exist, "
            "invalid base index spec: '/root/dev/123', "
            "invalid base index spec: 'bad'"
        )
        assert refused(new, {"bases": [5]}) == "invalid base index spec: 5"
        assert refused(new, {"bases": 5}) == "Unknown list value 5."
        assert refused(new, {"bases": ["ro ot/pypi"]}) == "base index 'ro ot/pypi' does not exist"

    def test_acl_case(self) -> None:
        config = new({"acl_upload": ":anonymous:,bob,:Authenticated:,Carol"})
        assert config["acl_upload"] == [":ANONYMOUS:", "bob", ":AUTHENTICATED:", "Carol"]
        assert new({"acl_toxresult_upload": [":authenticated:"]})["acl_toxresult_upload"] == [
            ":AUTHENTICATED:"
        ]
        assert "names" in refused(new, {"acl_upload": [None]})

    def test_whitelist_normalised(self) -> None:
        assert new({"mirror_whitelist": "he_llo,Django"})["mirror_whitelist"] == [
            "he-llo",
            "django",
        ]
        assert new({"mirror_whitelist": ["*", "Foo.Bar"]})["mirror_whitelist"] == ["*", "foo-bar"]

    def test_whitelist_inheritance(self) -> None:
        assert new({"mirror_whitelist_inheritance": "UNION"})["mirror_whitelist_inheritance"] == (
            "union"
        )
        assert refused(new, {"mirror_whitelist_inheritance": "Foo"}) == (
            "Unknown value 'foo' for mirror_whitelist_inheritance, "
            "must be 'intersection' or 'union'."
        )
        assert "mirror_whitelist_inheritance" in refused(new, {"mirror_whitelist_inheritance": 1})

    def test_booleans(self) -> None:
        assert refused(new, {"volatile": "maybe"}) == "Unknown boolean value 'maybe'."
        assert refused(new, {"volatile": 1}) == "Unknown boolean value 1."
        assert refused(new, {"volatile": "0"}) == "Unknown boolean value '0'."
        assert parse_bool("Yes", "volatile") is True
        assert parse_bool("FALSE", "volatile") is False
        assert parse_bool(False, "volatile") is False
        assert refused(parse_bool, 0, "volatile") == "Unknown boolean value 0."

    def test_types(self) -> None:
        assert refused(new, {"type": "foo"}) == "unknown index type 'foo'"
        assert refused(new, {"type": None}) == "unknown index type None"

    def test_unexpected_keys_on_stage(self) -> None:
        assert refused(new, {"mirror_url": "http://x/"}) == (
            "indexconfig got unexpected keyword arguments: mirror_url=http://x/"
        )
        assert refused(new, {"a": 1, "b": "two"}) == (
            "indexconfig got unexpected keyword arguments: a=1, b=two"
        )
        assert refused(new, {"a\nb": "c\nd"}) == (
            "indexconfig got unexpected keyword arguments: 'a\\nb'='c\\nd'"
        )

    def test_mirror_drops_stage_keys_and_refuses_others(self) -> None:
        config = new({"type": "mirror", "bases": "x", "acl_upload": "bob", "mirror_whitelist": "*"})
        assert config == {"type": MIRROR, "volatile": True, "mirror_cache_expiry": 1800}
        assert refused(new, {"type": "mirror", "acl_toxresult_upload": ""}) == (
            "indexconfig got unexpected keyword arguments: acl_toxresult_upload="
        )

    @pytest.mark.parametrize(
        "url", ["ftp://localhost/", "localhost", "http://", "http://a b/", 5, "http://h:99999/"]
    )
    def test_mirror_url(self, url: object) -> None:
        body = {"type": "mirror", "mirror_url": url}
        assert refused(new, body) == "'mirror_url' option must be a URL."

    @pytest.mark.parametrize("expiry", ["soon", "", True, 1.5, None, "9" * 5000])
    def test_mirror_cache_expiry(self, expiry: object) -> None:
        body = {"type": "mirror", "mirror_cache_expiry": expiry}
        assert refused(new, body) == "'mirror_cache_expiry' option must be an integer"

    def test_projects_ignored(self) -> None:
        assert new({"projects": ["a"]}) == stage()

    def test_not_an_object(self) -> None:
        assert refused(new, "volatile=False") == "index config must be a JSON object"


# -- PATCH -------------------------------------------------------------------------------------


class TestDictPatch:
    def test_merge(self) -> None:
        current = new({"bases": "root/pypi", "title": "T"})
        config = patch(current, {"volatile": "false", "projects": ["x"]})
        assert config == {**current, "volatile": False}

    def test_envelope(self) -> None:
        current = stage()
        body = {"type": "indexconfig", "result": {**current, "acl_upload": ["bob"]}}
        assert patch(current, body)["acl_upload"] == ["bob"]
        assert "result" in refused(patch, current, {"type": "indexconfig", "result": [1]})

    def test_type_cannot_change(self) -> None:
        assert refused(patch, stage(), {"type": "mirror"}) == (
            "the 'type' of an index can't be changed"
        )
        assert patch(stage(), {"type": "stage"}) == stage()
        assert refused(patch, stage(), ["type=mirror"]) == (
            "the 'type' of an index can't be changed"
        )

    def test_current_untouched(self) -> None:
        current = new({"bases": "root/pypi"})
        before = copy.deepcopy(current)
        config = patch(current, ["bases+=bob/prod", "acl_upload+=bob"])
        assert current == before
        assert config["bases"] == ["root/pypi", "bob/prod"]

    def test_unknown_keys(self) -> None:
        current = {**stage(), "plugin_key": [1]}
        assert refused(patch, current, {"other": 1}) == (
            "indexconfig got unexpected keyword arguments: other=1"
        )
        # sending the stored configuration back is fine
        assert patch(current, {**current, "volatile": False})["plugin_key"] == [1]
        assert "plugin_key=[2]" in refused(patch, current, {"plugin_key": [2]})

    def test_self_base(self) -> None:
        assert refused(patch, stage(), {"bases": "alice/dev"}) == (
            "base index 'alice/dev' is the index itself"
        )
        assert refused(patch, stage(), ["bases+=alice/dev"]) == (
            "base index 'alice/dev' is the index itself"
        )

    def test_mirror_patch(self) -> None:
        config = patch(mirror(), {"mirror_cache_expiry": "60", "bases": "root/pypi"})
        assert config == {**mirror(), "mirror_cache_expiry": 60}
        assert refused(patch, mirror(), {"mirror_url": "file:///etc"}) == (
            "'mirror_url' option must be a URL."
        )

    def test_not_an_object(self) -> None:
        assert refused(patch, stage(), "x") == "index config must be a JSON object"
        assert refused(patch, stage(), None) == "index config must be a JSON object"


class TestListPatch:
    def test_set(self) -> None:
        config = patch(
            stage(),
            [
                "bases=root/pypi,bob/prod",
                "acl_toxresult_upload=",
                "volatile=False",
                "title=a=b",
                "mirror_whitelist=he_llo,Django",
            ],
        )
        assert config["bases"] == ["root/pypi", "bob/prod"]
        assert config["acl_toxresult_upload"] == []
        assert config["volatile"] is False
        assert config["title"] == "a=b"
        assert config["mirror_whitelist"] == ["he-llo", "django"]

    def test_add_is_idempotent(self) -> None:
        config = patch(stage(), ["acl_upload+=bob", "acl_upload+=bob", "acl_upload+=alice"])
        assert config["acl_upload"] == ["alice", "bob"]
        config = patch(config, ["mirror_whitelist+=Foo_Bar", "mirror_whitelist+=foo-bar"])
        assert config["mirror_whitelist"] == ["foo-bar"]
        config = patch(config, ["acl_upload+=:anonymous:", "acl_upload+=:ANONYMOUS:"])
        assert config["acl_upload"] == ["alice", "bob", ":ANONYMOUS:"]

    def test_del(self) -> None:
        config = patch(stage(), ["acl_upload+=bob", "acl_upload-=alice"])
        assert config["acl_upload"] == ["bob"]
        assert refused(patch, stage(), ["acl_upload-=nobody"]) == (
            "The 'acl_upload' setting doesn't have value 'nobody'"
        )
        assert patch(config, ["acl_upload+=:anonymous:", "acl_upload-=:Anonymous:"]) == config

    def test_a_vanished_base_blocks_nothing(self) -> None:
        current = {**stage(), "bases": ["gone/away", "root/pypi"]}
        assert patch(current, ["bases-=gone/away"])["bases"] == ["root/pypi"]
        assert patch(current, ["bases+=gone/away", "volatile=no"])["bases"] == current["bases"]
        assert patch(current, {**current, "title": "t"})["bases"] == current["bases"]
        assert refused(patch, current, ["bases=gone/other"]) == (
            "base index 'gone/other' does not exist"
        )

    def test_empty_add(self) -> None:
        assert refused(patch, stage(), ["acl_upload+="]) == (
            "The 'acl_upload' setting can't have an empty value"
        )

    def test_drop(self) -> None:
        current = new({"title": "T", "description": "D"})
        config = patch(current, ["title-=", "custom_data-="])
        assert "title" not in config
        assert config["description"] == "D"

    @pytest.mark.parametrize(
        "key",
        [
            "volatile",
            "bases",
            "acl_upload",
            "acl_toxresult_upload",
            "mirror_whitelist",
            "mirror_whitelist_inheritance",
            "type",
        ],
    )
    def test_defaults_cannot_be_dropped(self, key: str) -> None:
        assert refused(patch, stage(), [f"{key}-="]) == "Default values can't be removed."

    def test_mirror_ops(self) -> None:
        assert refused(patch, mirror(), ["volatile-="]) == "Default values can't be removed."
        config = patch(mirror(), ["mirror_url=http://localhost:2/simple/", "mirror_url-="])
        assert "mirror_url" not in config
        assert patch(mirror(), ["bases=root/pypi", "bases+=bob/prod"]) == mirror()

    def test_atomic(self) -> None:
        current = stage()
        before = copy.deepcopy(current)
        message = refused(patch, current, ["title=x", "acl_upload+=bob", "volatile=maybe"])
        assert message == "Unknown boolean value 'maybe'."
        assert current == before
        assert refused(patch, current, ["title=x", 5]).startswith("index config changes")

    def test_unknown_and_non_list_keys(self) -> None:
        assert refused(patch, stage(), ["unknown+=x"]) == "unknown index config key 'unknown'"
        assert refused(patch, stage(), ["unknown-=x"]) == "unknown index config key 'unknown'"
        assert refused(patch, stage(), ["volatile+=x"]) == "The 'volatile' setting is not a list"
        assert refused(patch, stage(), ["foo=bar"]) == (
            "indexconfig got unexpected keyword arguments: foo=bar"
        )
        assert refused(patch, stage(), ["title"]) == "index config change 'title' is not key=value"

    def test_unknown_stored_keys_survive(self) -> None:
        current = {**stage(), "plugin_key": "kept"}
        config = patch(current, ["acl_upload+=bob", "acl_upload-=alice", "title-="])
        assert config["plugin_key"] == "kept"
        assert patch(current, ["volatile=no"])["plugin_key"] == "kept"
        assert "plugin_key" not in patch(current, ["plugin_key-="])

    def test_missing_list_key_starts_from_default(self) -> None:
        current = {"type": "stage", "volatile": True, "bases": []}
        config = patch(current, ["acl_toxresult_upload+=bob", "mirror_whitelist+=a"])
        assert config["acl_toxresult_upload"] == [":ANONYMOUS:", "bob"]
        assert config["mirror_whitelist"] == ["a"]


# -- only InvalidConfig, whatever the JSON -----------------------------------------------------

KEYS = [
    "type",
    "volatile",
    "bases",
    "acl_upload",
    "acl_toxresult_upload",
    "mirror_whitelist",
    "mirror_whitelist_inheritance",
    "title",
    "custom_data",
    "mirror_url",
    "mirror_cache_expiry",
    "mirror_no_project_list",
    "projects",
    "result",
    "password",
    "pwhash",
    "email",
    "indexes",
    "unknown",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["stage", "mirror", "indexconfig", "root/pypi", "http://localhost/", "1"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
)
op_items = st.builds(
    lambda key, op, value: f"{key}{op}{value}",
    st.sampled_from([*KEYS, "", "+", "-"]),
    st.sampled_from(["=", "+=", "-=", ""]),
    st.one_of(st.text(max_size=10), st.sampled_from(["root/pypi", "alice", ":anonymous:", "*"])),
)
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6),
    st.lists(st.one_of(op_items, json_values), max_size=6),
)
currents = st.sampled_from(
    [
        lambda: new({}),
        lambda: new({"type": "mirror", "mirror_url": "http://localhost/"}),
        lambda: {"type": "stage", "bases": "root/pypi", "acl_upload": None, "odd": 1},
        lambda: {"type": "mirror", "volatile": "x"},
        lambda: {},
    ]
)


def only_invalid_config(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except InvalidConfig as e:
        assert len(e.args) == 1
        assert isinstance(e.args[0], str)
        assert "\n" not in e.args[0]
        assert len(e.args[0]) < 2000
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, current=currents)
def test_any_json_is_refused_cleanly(body: object, current: Any) -> None:
    before = copy.deepcopy(body)
    only_invalid_config(parse_new_user, body)
    only_invalid_config(parse_user_patch, body)
    only_invalid_config(new, body)
    stored = current()
    stored_before = copy.deepcopy(stored)
    only_invalid_config(patch, stored, body)
    assert stored == stored_before
    assert body == before or body != body  # NaN never equals itself


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
def test_a_new_config_sent_back_is_unchanged(body: dict[str, Any]) -> None:
    config = only_invalid_config(new, body)
    if config is not None:
        assert patch(config, copy.deepcopy(config), name="zed/x") == config
        envelope = {"type": "indexconfig", "result": {**config, "projects": []}}
        assert patch(config, envelope, name="zed/x") == config
