"""The constraints of a constrained index, in memory: lines, normalising, what they allow.

Plus hypothesis fuzzing of the normaliser (any text, any JSON value) and of
``PATCH`` lists that change ``constraints``, and of the same through the real
site in memory (``tests.test_private_fuzz``'s server): only one-line refusals,
idempotent normalising, and a refusal changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devpid.mirror.pages import CachedPage
from devpid.private.constraints import (
    ALL,
    MAX_CONSTRAINTS,
    constraints_of,
    file_version,
    normalise_constraints,
)
from devpid.private.indexconfig import new_index_config, patch_index_config
from devpid.private.names import InvalidConfig
from devpid.routes.stagepages import constrained_page
from devpid.simple.model import Link, ProjectPage
from tests.fixtures.app import MemoryDevpid
from tests.test_private_fuzz import (
    FUZZ,
    call,
    check,
    json_values,
    private_data,
    snapshot,
)
from tests.test_private_fuzz import devpid as devpid

BASES = {"root/pypi", "alice/dev"}


def constrained(lines: object = ()) -> dict[str, Any]:
    return new_index_config(
        "prod",
        {"type": "constrained", "bases": "root/pypi", "constraints": lines},
        index_exists=BASES.__contains__,
        default_cache_expiry=60,
    )


def patched(config: dict[str, Any], *ops: str) -> dict[str, Any]:
    return patch_index_config(
        "prod/vetted", "prod", config, list(ops), index_exists=BASES.__contains__
    )


# -- lines ---------------------------------------------------------------------------


def test_string_form_is_split_on_newlines_only() -> None:
    text = "pip<8,>4\n# a comment\n\n  Django == 4.2.*  # the LTS\nrequests[socks]<2.32\n*\n"
    assert normalise_constraints(text) == ["pip<8,>4", "django==4.2.*", "requests<2.32", ALL]


def test_list_form_and_duplicates() -> None:
    assert normalise_constraints(["a<2", "A < 2", "", "# x", "*", "*"]) == ["a<2", ALL]
    with pytest.raises(InvalidConfig, match="constraint for 'a' given twice: 'a<2' and 'a>3'"):
        normalise_constraints(["a<2", "a>3"])


def test_specifiers_are_stored_in_one_spelling() -> None:
    # packaging orders the specifiers: ``-=`` finds a line however it was written
    assert normalise_constraints("pip>4,<8") == normalise_constraints("pip <8, >4")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pip<8,,>4", "bad constraint 'pip<8,,>4': Expected"),
        ("==1.0", "bad constraint '==1.0'"),
        ("A_<0", "bad constraint 'A_<0': not a valid project name"),
        ("x @ http://127.0.0.1/x.whl", "a URL can't constrain an index"),
        ('x<2; sys_platform == "linux"', "environment markers"),
        ("x" * 1001, "longer than 1000 characters"),
        (5, "'constraints' takes requirement lines, not 5"),
        ([None], "'constraints' takes requirement lines, not None"),
        ({"a": 1}, "'constraints' takes requirement lines"),
        ("\n".join(f"p{n}" for n in range(MAX_CONSTRAINTS + 1)), "at most 10000 constraints"),
    ],
)
def test_bad_input_is_one_clear_line(value: object, message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        normalise_constraints(value)
    assert message in caught.value.message
    assert "\n" not in caught.value.message and len(caught.value.message) < 400


def test_config_keys_and_list_ops() -> None:
    config = constrained()
    assert config["type"] == "constrained" and config["constraints"] == []
    config = patched(config, "constraints+=pip<8,>4", "constraints+=*")
    assert config["constraints"] == ["pip<8,>4", ALL]
    assert patched(config, "constraints+=pip <8,>4")["constraints"] == config["constraints"]
    assert patched(config, "constraints-=pip>4,<8")["constraints"] == [ALL]
    with pytest.raises(InvalidConfig, match="given twice"):
        patched(config, "constraints+=pip<9")
    with pytest.raises(InvalidConfig, match="Default values can't be removed"):
        patched(config, "constraints-=")
    with pytest.raises(InvalidConfig, match="needs at least one base"):
        patched(config, "bases-=root/pypi")
    with pytest.raises(InvalidConfig, match="type' of an index can't be changed"):
        patched(config, "type=stage")


def test_only_constrained_indexes_take_constraints() -> None:
    with pytest.raises(InvalidConfig, match="unexpected keyword arguments: constraints"):
        new_index_config(
            "prod",
            {"bases": "root/pypi", "constraints": "a<2"},
            index_exists=BASES.__contains__,
            default_cache_expiry=60,
        )
    assert constraints_of({"type": "stage", "constraints": ["a<2"]}) is None


# -- what they allow -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "version"),
    [
        ("demo-1.0-py3-none-any.whl", "1.0"),
        ("demo-2.0rc1.tar.gz", "2.0rc1"),
        ("Demo-1.5.zip", "1.5"),
        ("demo-1.2.tar.bz2", "1.2"),
        ("demo-1.0-py3.8.egg", None),
        ("other-1.0.tar.gz", None),
        ("demo-latest.tar.gz", None),
        ("demo.exe", None),
    ],
)
def test_file_versions(filename: str, version: str | None) -> None:
    found = file_version("demo", filename)
    assert (str(found) if found is not None else None) == version


def test_versions_files_and_projects() -> None:
    rules = constraints_of(constrained("demo<2\nexact==1.0\n*"))
    assert rules is not None
    assert rules.allows_file("demo", "demo-1.0-py3-none-any.whl")
    assert rules.allows_file("demo", "demo-2.0b1.tar.gz") is False
    assert rules.allows_file("demo", "demo-1.9rc1.tar.gz")  # contained: a pre-release passes
    assert rules.allows_file("demo", "demo-whatever.tar.gz") is False
    assert rules.allows_version("exact", "1.0") and not rules.allows_version("exact", "1.1")
    assert rules.allows_version("demo", "not a version") is False
    assert not rules.allows_project("other") and rules.allows_project("demo")
    open_rules = constraints_of(constrained("demo<2"))
    assert open_rules is not None and open_rules.allows_file("other", "other-9.tar.gz")
    assert open_rules.allows_version("other", "junk")


def test_constrained_page_keeps_the_mirror_and_drops_versions() -> None:
    links = tuple(
        Link(filename=f"demo-{v}.tar.gz", url=f"https://127.0.0.1/demo-{v}.tar.gz")
        for v in ("1.0", "2.0")
    )
    entry = CachedPage(ProjectPage("demo", links, versions=("1.0", "2.0"), serial=7), None, 7, 0)
    rules = constraints_of(constrained("demo<2"))
    assert rules is not None
    page = constrained_page(entry, "demo", rules, "root/pypi").content
    assert isinstance(page, ProjectPage)
    assert [link.filename for link in page.links] == ["demo-1.0.tar.gz"]
    assert page.links[0].index == "root/pypi" and page.versions is None and page.serial == 7


# -- fuzzing ------------------------------------------------------------------------------

requirement_like = st.builds(
    lambda name, op, version, extra: f"{name}{op}{version}{extra}",
    st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,12}", fullmatch=True),
    st.sampled_from(["", "<", "<=", "==", "!=", ">=", ">", "~=", "===", " == ", ",", "@"]),
    st.from_regex(r"[0-9][0-9a-z.*+!-]{0,8}", fullmatch=True),
    st.sampled_from(["", ",<9", " # c", "; python_version>'3'", "[x]", "\t", "\r", "\x00"]),
)
lines = requirement_like | st.text(max_size=40) | st.just(ALL)
constraint_values = (
    st.lists(lines, max_size=8).map("\n".join)
    | st.lists(lines, max_size=8)
    | json_values
    | st.text(max_size=200)
)


@FUZZ
@given(value=constraint_values)
def test_fuzz_normaliser(value: object) -> None:
    try:
        stored = normalise_constraints(value)
    except InvalidConfig as e:
        assert "\n" not in e.message and e.message and len(e.message) < 400
        return
    assert normalise_constraints(stored) == stored  # idempotent
    assert normalise_constraints("\n".join(stored)) == stored  # the string form too
    projects = []
    for line in stored:
        if line == ALL:
            continue
        requirement = Requirement(line)
        assert requirement.marker is None and requirement.url is None and not requirement.extras
        assert requirement.name == canonicalize_name(requirement.name)
        projects.append(requirement.name)
    assert len(projects) == len(set(projects))
    assert constraints_of({"type": "constrained", "constraints": stored}) is not None


@FUZZ
@given(ops=st.lists(st.builds("constraints{}{}".format, st.sampled_from(["=", "+=", "-="]), lines)))
def test_fuzz_patch_ops(ops: list[str]) -> None:
    config = constrained("demo<2")
    try:
        changed = patched(config, *ops)
    except InvalidConfig as e:
        assert "\n" not in e.message and e.message
        return
    assert normalise_constraints(changed["constraints"]) == changed["constraints"]


@FUZZ
@given(body=st.lists(lines, max_size=4).map("\n".join) | json_values)
def test_fuzz_constraints_over_http(devpid: MemoryDevpid, body: object) -> None:
    made = call(
        devpid, "PUT", "/alice/vetted", json.dumps({"type": "constrained", "bases": "alice/dev"})
    )
    assert made.code in (200, 409), made.raw
    data = private_data(devpid)
    before = snapshot(data)
    answer = call(devpid, "PATCH", "/alice/vetted", json.dumps({"constraints": body}))
    check(answer)
    if answer.code >= 400:
        assert snapshot(data) == before, answer.raw[:500]
    else:
        stored = data.index("alice/vetted")
        assert stored is not None
        assert normalise_constraints(stored["constraints"]) == stored["constraints"]
    listed = call(devpid, "GET", "/alice/vetted/+simple/")
    check(listed)
