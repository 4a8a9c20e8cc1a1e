"""A DAG file's module name: the same in every process, whatever folder it is in."""

from __future__ import annotations

from pathlib import Path

from legato.dags import module_name


def test_the_name_comes_from_the_file_name_only() -> None:
    assert module_name(Path("/srv/a/orders.py")) == "legato_dags.orders"
    assert module_name(Path("/elsewhere/orders.py")) == "legato_dags.orders"


def test_characters_a_python_name_cannot_have_become_underscores() -> None:
    assert module_name(Path("my-flows.v2.py")) == "legato_dags.my_flows_v2"


def test_a_name_is_never_private_nor_starts_with_a_digit() -> None:
    """The Python executor refuses paths with a part starting with `_`."""
    assert module_name(Path("2024_jobs.py")) == "legato_dags.dag_2024_jobs"
