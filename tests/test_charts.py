"""``line_chart``: well-formed SVG without scripts, styles or references; escaped text,
gaps, a round scale, and a chart that says so when there is nothing to draw."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from devpid.web.charts import (
    compact_number,
    format_bytes,
    format_value,
    line_chart,
    nice_ceiling,
)

NOW = 10_000.0


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(root: ET.Element, cls: str) -> list[str]:
    return [e.text or "" for e in root.iter("text") if cls in e.get("class", "").split()]


def line_path(root: ET.Element) -> str:
    paths = [e for e in root.iter("path") if e.get("class") == "chart-line"]
    assert len(paths) == 1
    return paths[0].get("d", "")


def test_a_chart_is_an_inline_svg_without_scripts_styles_or_references() -> None:
    svg = line_chart(
        [(NOW - 60, 1.0), (NOW - 30, 2.0), (NOW, 3.0)], title="Rate", unit="/s", now=NOW
    )
    root = parse(svg)
    assert root.tag == "svg"
    assert root.get("class") == "chart"
    assert root.get("role") == "img"
    assert root.get("viewBox") == "0 0 320 100"
    assert root[0].tag == "title" and root[0].text == "Rate"
    for element in root.iter():
        assert element.tag not in ("script", "style", "image", "use", "a", "foreignObject")
        assert "style" not in element.attrib
        assert not any(name.startswith("on") for name in element.attrib)
        assert not any("href" in name for name in element.attrib)
    assert "http" not in svg and "url(" not in svg


def test_title_and_unit_are_escaped() -> None:
    title = "<script>alert(\"x\")</script> & 'quotes'"
    unit = '"><script>'
    svg = line_chart([(NOW, 1.0)], title=title, unit=unit, now=NOW)
    assert "<script" not in svg
    root = parse(svg)
    assert root.find("title") is not None
    assert root.find("title").text == title  # type: ignore[union-attr]
    assert texts(root, "chart-title") == [title]
    assert texts(root, "chart-latest") == [f"1 {unit}"]
    assert not list(root.iter("script"))


def test_none_breaks_the_line_and_a_lone_point_is_a_dot() -> None:
    points: list[tuple[float, float | None]] = [
        (NOW - 120, 1.0),
        (NOW - 90, 2.0),
        (NOW - 60, None),
        (NOW - 30, 3.0),
        (NOW - 20, None),
        (NOW, 4.0),
        (NOW - 10, 5.0),  # out of order: sorted by time
    ]
    root = parse(line_chart(points, title="t", unit="ms", now=NOW))
    subpaths = line_path(root).split("M")[1:]
    assert len(subpaths) == 2  # [-120, -90] and [-10, 0]
    assert all(len(s.split("L")) == 2 for s in subpaths)
    dots = [e for e in root.iter("circle") if e.get("class") == "chart-dot"]
    assert len(dots) == 1  # the point at -30 between two gaps


def test_points_further_apart_than_the_gap_are_not_joined() -> None:
    points: list[tuple[float, float | None]] = [
        (NOW - 300, 1.0),
        (NOW - 270, 1.0),
        (NOW - 30, 1.0),
        (NOW, 1.0),
    ]
    joined = parse(line_chart(points, title="t", unit="", now=NOW))
    assert len(line_path(joined).split("M")[1:]) == 1
    broken = parse(line_chart(points, title="t", unit="", now=NOW, gap=90))
    assert len(line_path(broken).split("M")[1:]) == 2


def test_nan_and_infinity_are_gaps_and_do_not_set_the_scale() -> None:
    points: list[tuple[float, float | None]] = [
        (NOW - 90, 10.0),
        (NOW - 60, math.inf),
        (NOW - 30, 20.0),
        (NOW - 15, math.nan),
        (NOW, 30.0),
        (math.nan, 1e9),
    ]
    svg = line_chart(points, title="t", unit="ms", now=NOW)
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    root = parse(svg)
    assert texts(root, "chart-max") == ["50 ms"]
    assert len([e for e in root.iter("circle") if e.get("class") == "chart-dot"]) == 3


def test_the_scale_runs_from_zero_to_a_round_number_above_the_highest_value() -> None:
    points: list[tuple[float, float | None]] = [(NOW - 3600 + 30 * i, float(i)) for i in range(121)]
    points.append((NOW - 7200, 1e6))  # older than the span: not drawn, not scaled for
    root = parse(line_chart(points, title="t", unit="/s", now=NOW))
    assert texts(root, "chart-max") == ["200/s"]
    assert texts(root, "chart-zero") == ["0/s"]
    assert texts(root, "chart-latest") == ["120/s"]
    coordinates = [
        tuple(float(c) for c in pair.strip().split())
        for pair in line_path(root).lstrip("M").split("L")
    ]
    assert len(coordinates) == 121
    xs = [x for x, _ in coordinates]
    ys = [y for _, y in coordinates]
    assert xs == sorted(xs)
    assert xs[0] == pytest.approx(46.0) and xs[-1] == pytest.approx(314.0)
    assert ys[0] == pytest.approx(86.0)  # 0 at the bottom
    assert ys[-1] == pytest.approx(86.0 - 68.0 * 120 / 200, abs=0.1)
    assert min(ys) >= 18.0


def test_the_latest_value_is_shown_even_when_it_is_missing() -> None:
    root = parse(line_chart([(NOW - 30, 12.0), (NOW, None)], title="t", unit="ms", now=NOW))
    assert texts(root, "chart-latest") == ["-"]
    assert texts(root, "chart-max") == ["20 ms"]


@pytest.mark.parametrize(
    "points",
    [[], [(NOW, None)], [(NOW, math.nan)], [(NOW - 4000, 1.0)], [(NOW + 30, 1.0)]],
)
def test_without_data_the_chart_says_so(points: list[tuple[float, float | None]]) -> None:
    root = parse(line_chart(points, title="Hit rate", unit="%", now=NOW))
    assert texts(root, "chart-empty") == ["no data yet"]
    assert not [e for e in root.iter("path") if e.get("class") == "chart-line"]
    assert not texts(root, "chart-latest")
    assert root.find("title").text == "Hit rate"  # type: ignore[union-attr]


def test_all_zero_values_get_a_scale_of_one() -> None:
    root = parse(line_chart([(NOW - 30, 0.0), (NOW, 0.0)], title="t", unit="/s", now=NOW))
    assert texts(root, "chart-max") == ["1/s"]
    assert "M" in line_path(root)


def test_width_and_height() -> None:
    root = parse(line_chart([(NOW, 1.0)], title="t", unit="", now=NOW, width=200, height=60))
    assert root.get("viewBox") == "0 0 200 60"
    assert (root.get("width"), root.get("height")) == ("200", "60")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.5, "0.5"),
        (12.0, "12"),
        (123.4, "123"),
        (999.6, "1k"),
        (1234.5, "1.23k"),
        (3_400_000, "3.4M"),
        (-1500, "-1.5k"),
        (math.nan, "-"),
    ],
)
def test_compact_numbers(value: float, text: str) -> None:
    assert compact_number(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KB"),
        (3.4 * 1024**2, "3.4 MB"),
        (1023.9 * 1024, "1024 KB"),
        (5 * 1024**4, "5 TB"),
    ],
)
def test_byte_sizes(value: float, text: str) -> None:
    assert format_bytes(value) == text


def test_units() -> None:
    assert format_value(97.5, "%") == "97.5%"
    assert format_value(2500, "/s") == "2.5k/s"
    assert format_value(120, "ms") == "120 ms"
    assert format_value(2048, "B/s") == "2 KB/s"
    assert format_value(7, "") == "7"


@pytest.mark.parametrize(
    ("value", "unit", "ceiling"),
    [
        (0, "", 1),
        (0.3, "", 0.5),
        (97, "%", 100),
        (1.0, "", 1.0),
        (2.2, "", 2.5),
        (130, "", 200),
        (3.4 * 1024**2, "B", 5 * 1024**2),
    ],
)
def test_nice_ceilings(value: float, unit: str, ceiling: float) -> None:
    assert nice_ceiling(value, unit) == pytest.approx(ceiling)
