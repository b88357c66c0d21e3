"""Resolution order over bases and the mirror_whitelist guard (devpi-api.md 6.3, 6.4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpid.private.resolve import Resolution, Stage, resolution_order, resolve_project

PYPI = "root/pypi"


def stages_from(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Stage]:
    return {name: Stage.from_config(name, config) for name, config in configs.items()}


def stage(**config: Any) -> dict[str, Any]:
    """A stored stage configuration with devpi's defaults for a new index."""
    return {
        "type": "stage",
        "bases": [],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
        **config,
    }


MIRROR = {"type": "mirror", "mirror_url": "http://localhost:1/simple/"}


class Holdings:
    """Which private stages hold which projects; records every question asked."""

    def __init__(self, holdings: Mapping[str, Iterable[str]]) -> None:
        self.holdings = {name: set(projects) for name, projects in holdings.items()}
        self.asked: list[tuple[str, str]] = []

    def __call__(self, stage_name: str, project: str) -> bool:
        self.asked.append((stage_name, project))
        return project in self.holdings.get(stage_name, ())


# -- Stage.from_config ----------------------------------------------------------------


def test_from_config_reads_a_stored_stage() -> None:
    config = stage(
        bases=["alice/base", PYPI],
        mirror_whitelist=["hello", "*"],
        mirror_whitelist_inheritance="union",
    )
    assert Stage.from_config("alice/dev", config) == Stage(
        name="alice/dev",
        is_mirror=False,
        bases=("alice/base", PYPI),
        whitelist=frozenset({"hello", "*"}),
        inheritance="union",
    )


def test_from_config_missing_inheritance_means_union() -> None:
    # Indexes stored before the key existed keep devpi's old behaviour.
    assert Stage.from_config("alice/old", {"type": "stage", "bases": []}).inheritance == "union"


def test_from_config_defaults_for_new_index_are_intersection() -> None:
    assert Stage.from_config("alice/new", stage()).inheritance == "intersection"


def test_from_config_missing_type_is_a_stage() -> None:
    assert Stage.from_config("alice/x", {}) == Stage(
        name="alice/x", is_mirror=False, inheritance="union"
    )


def test_from_config_plugin_type_is_private() -> None:
    assert not Stage.from_config("alice/x", stage(type="someplugin")).is_mirror


def test_from_config_mirror_drops_bases_and_whitelist() -> None:
    config = {**MIRROR, "bases": ["alice/dev"], "mirror_whitelist": ["*"]}
    mirror = Stage.from_config(PYPI, config)
    assert mirror == Stage(name=PYPI, is_mirror=True, inheritance="union")


def test_from_config_accepts_comma_strings() -> None:
    config = stage(bases="a/b, c/d", mirror_whitelist="hello,")
    parsed = Stage.from_config("alice/dev", config)
    assert parsed.bases == ("a/b", "c/d")
    assert parsed.whitelist == frozenset({"hello"})


def test_from_config_rejects_unknown_inheritance() -> None:
    with pytest.raises(ValueError, match="mirror_whitelist_inheritance"):
        Stage.from_config("alice/dev", stage(mirror_whitelist_inheritance="sometimes"))


def test_stage_rejects_unknown_inheritance() -> None:
    with pytest.raises(ValueError):
        Stage(name="a/a", is_mirror=False, inheritance="both")


# -- resolution_order ----------------------------------------------------------------


def test_order_breadth_first_with_mirrors_last() -> None:
    stages = stages_from(
        {
            "u/a": stage(bases=["u/b", PYPI, "u/c"]),
            "u/b": stage(bases=["u/d"]),
            "u/c": stage(),
            "u/d": stage(),
            PYPI: MIRROR,
        }
    )
    assert resolution_order("u/a", stages) == ["u/a", "u/b", "u/c", "u/d", PYPI]


def test_order_mirrors_in_discovery_order() -> None:
    stages = stages_from(
        {
            "u/a": stage(bases=["m/one", "u/b"]),
            "u/b": stage(bases=["m/two", "m/one"]),
            "m/one": MIRROR,
            "m/two": MIRROR,
        }
    )
    assert resolution_order("u/a", stages) == ["u/a", "u/b", "m/one", "m/two"]


def test_order_diamond_visits_once() -> None:
    stages = stages_from(
        {
            "u/a": stage(bases=["u/b", "u/c"]),
            "u/b": stage(bases=["u/c", PYPI]),
            "u/c": stage(bases=[PYPI]),
            PYPI: MIRROR,
        }
    )
    assert resolution_order("u/a", stages) == ["u/a", "u/b", "u/c", PYPI]


def test_order_terminates_on_cycles() -> None:
    stages = stages_from(
        {
            "u/a": stage(bases=["u/b"]),
            "u/b": stage(bases=["u/c", "u/a"]),
            "u/c": stage(bases=["u/c", "u/b"]),
        }
    )
    assert resolution_order("u/a", stages) == ["u/a", "u/b", "u/c"]
    assert resolution_order("u/c", stages) == ["u/c", "u/b", "u/a"]


def test_order_skips_missing_bases() -> None:
    stages = stages_from({"u/a": stage(bases=["gone/away", "u/b"]), "u/b": stage()})
    assert resolution_order("u/a", stages) == ["u/a", "u/b"]


def test_order_of_a_mirror_is_itself() -> None:
    stages = {
        PYPI: Stage(name=PYPI, is_mirror=True, bases=("u/a",)),
        "u/a": Stage(name="u/a", is_mirror=False),
    }
    assert resolution_order(PYPI, stages) == [PYPI]


def test_order_of_a_missing_start_is_empty() -> None:
    assert resolution_order("gone/away", {}) == []


# -- resolve_project: the observed cases of 6.4 -----------------------------------------


def alice(dev: Mapping[str, Any], **more: Mapping[str, Any]) -> dict[str, Stage]:
    return stages_from({"alice/dev": dev, PYPI: MIRROR, **more})


HELLO_IN_DEV = {"alice/dev": ["hello"]}


def test_private_project_hides_the_mirror() -> None:
    stages = alice(stage(bases=[PYPI]))
    result = resolve_project("alice/dev", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/dev",), blocked_by=PYPI)


def test_whitelisted_private_project_shows_the_mirror() -> None:
    stages = alice(stage(bases=[PYPI], mirror_whitelist=["hello"]))
    result = resolve_project("alice/dev", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/dev", PYPI), blocked_by=None)


def test_star_whitelists_every_project() -> None:
    stages = alice(stage(bases=[PYPI], mirror_whitelist=["*"]))
    result = resolve_project("alice/dev", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/dev", PYPI), blocked_by=None)


def test_whitelist_of_another_project_does_not_help() -> None:
    stages = alice(stage(bases=[PYPI], mirror_whitelist=["other"]))
    result = resolve_project("alice/dev", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/dev",), blocked_by=PYPI)


@pytest.mark.parametrize(
    ("inheritance", "expected"),
    [
        ("intersection", Resolution(stages=("alice/child", "alice/dev"), blocked_by=PYPI)),
        ("union", Resolution(stages=("alice/child", "alice/dev", PYPI), blocked_by=None)),
    ],
)
def test_child_inheritance_decides(inheritance: str, expected: Resolution) -> None:
    stages = alice(
        stage(bases=[PYPI], mirror_whitelist=["hello"]),
        **{
            "alice/child": stage(
                bases=["alice/dev"],
                mirror_whitelist=[],
                mirror_whitelist_inheritance=inheritance,
            )
        },
    )
    result = resolve_project("alice/child", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == expected


def test_the_requesting_index_inheritance_counts_not_the_base() -> None:
    # alice/dev says union, but alice/child (the requester) says intersection.
    stages = alice(
        stage(bases=[PYPI], mirror_whitelist=["hello"], mirror_whitelist_inheritance="union"),
        **{"alice/child": stage(bases=["alice/dev"])},
    )
    result = resolve_project("alice/child", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result.blocked_by == PYPI


def test_old_index_without_inheritance_key_unions() -> None:
    stages = alice(
        stage(bases=[PYPI], mirror_whitelist=["hello"]),
        **{"alice/child": {"type": "stage", "bases": ["alice/dev"]}},
    )
    result = resolve_project("alice/child", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/child", "alice/dev", PYPI), blocked_by=None)


def test_whitelisted_early_stays_whitelisted() -> None:
    # The requester itself names the project; a base with an empty list does not undo it.
    stages = alice(
        stage(bases=[PYPI]),
        **{"alice/child": stage(bases=["alice/dev"], mirror_whitelist=["hello"])},
    )
    holdings = Holdings(HELLO_IN_DEV)
    result = resolve_project("alice/child", "hello", stages, holdings)
    assert result == Resolution(stages=("alice/child", "alice/dev", PYPI), blocked_by=None)


def test_private_in_a_base_hides_the_mirror_for_the_child() -> None:
    stages = alice(stage(bases=[PYPI]), **{"alice/child": stage(bases=["alice/dev"])})
    result = resolve_project("alice/child", "hello", stages, Holdings(HELLO_IN_DEV))
    assert result == Resolution(stages=("alice/child", "alice/dev"), blocked_by=PYPI)


def test_project_that_is_not_private_consults_the_mirror() -> None:
    stages = alice(stage(bases=[PYPI]))
    holdings = Holdings(HELLO_IN_DEV)
    result = resolve_project("alice/dev", "requests", stages, holdings)
    assert result == Resolution(stages=("alice/dev", PYPI), blocked_by=None)
    assert holdings.asked == [("alice/dev", "requests")]


def test_mirror_only_chain_is_consulted_without_asking() -> None:
    holdings = Holdings({PYPI: ["hello"]})
    result = resolve_project(PYPI, "hello", stages_from({PYPI: MIRROR}), holdings)
    assert result == Resolution(stages=(PYPI,), blocked_by=None)
    assert holdings.asked == []


def test_mirrors_are_never_asked_about_private_projects() -> None:
    stages = stages_from({"u/a": stage(bases=["m/one", "u/b"]), "u/b": stage(), "m/one": MIRROR})
    holdings = Holdings({"u/b": ["hello"]})
    resolve_project("u/a", "hello", stages, holdings)
    assert holdings.asked == [("u/a", "hello"), ("u/b", "hello")]


def test_blocked_by_names_the_first_blocked_mirror() -> None:
    stages = stages_from(
        {
            "u/a": stage(bases=["m/two", "m/one"]),
            "m/one": MIRROR,
            "m/two": MIRROR,
        }
    )
    result = resolve_project("u/a", "hello", stages, Holdings({"u/a": ["hello"]}))
    assert result == Resolution(stages=("u/a",), blocked_by="m/two")


def test_private_project_behind_a_mirror_still_hides_it() -> None:
    # The mirror is listed first in bases, but the private stage is consulted first.
    stages = stages_from({"u/a": stage(bases=[PYPI, "u/b"]), "u/b": stage(), PYPI: MIRROR})
    result = resolve_project("u/a", "hello", stages, Holdings({"u/b": ["hello"]}))
    assert result == Resolution(stages=("u/a", "u/b"), blocked_by=PYPI)


def test_missing_start_resolves_to_nothing() -> None:
    result = resolve_project("gone/away", "hello", {}, Holdings({}))
    assert result == Resolution(stages=(), blocked_by=None)


# -- properties ------------------------------------------------------------------------

NAMES = [f"u/{n}" for n in "abcdefg"]


@st.composite
def stage_graphs(draw: st.DrawFn) -> tuple[str, dict[str, Stage]]:
    present = draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
    stages = {
        name: Stage(
            name=name,
            is_mirror=draw(st.booleans()),
            # bases may name absent stages, repeat, or point back (cycles)
            bases=tuple(draw(st.lists(st.sampled_from(NAMES), max_size=5))),
        )
        for name in present
    }
    return draw(st.sampled_from(present)), stages


@given(stage_graphs())
def test_order_properties(graph: tuple[str, dict[str, Stage]]) -> None:
    start, stages = graph
    order = resolution_order(start, stages)
    assert order[0] == start
    assert len(order) == len(set(order))
    assert set(order) <= set(stages)
    kinds = [stages[name].is_mirror for name in order]
    assert kinds == sorted(kinds), "a mirror came before a private stage"


@given(stage_graphs(), st.sets(st.sampled_from(NAMES)), st.booleans())
def test_resolution_only_drops_mirrors(
    graph: tuple[str, dict[str, Stage]], holders: set[str], whitelist_all: bool
) -> None:
    start, stages = graph
    if whitelist_all:
        stages[start] = attrs.evolve(stages[start], whitelist=frozenset({"*"}))
    holdings = Holdings({holder: ["hello"] for holder in holders})
    result = resolve_project(start, "hello", stages, holdings)
    order = resolution_order(start, stages)
    dropped = [name for name in order if name not in result.stages]
    assert [name for name in order if name in result.stages] == list(result.stages)
    assert all(stages[name].is_mirror for name in dropped)
    assert result.blocked_by == (dropped[0] if dropped else None)
    private = [name for name in order if not stages[name].is_mirror]
    if (whitelist_all and private) or not holders.intersection(private):
        assert dropped == []
    elif not whitelist_all:
        # a private holder and no whitelist anywhere: every mirror is hidden
        assert dropped == [name for name in order if stages[name].is_mirror]
