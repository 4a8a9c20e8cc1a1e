"""A definition document may call Python functions only from the modules the engine allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato import DefinitionError, Engine


def doc(function: str) -> dict[str, object]:
    return {
        "name": "py",
        "steps": {
            "call": {"python": {"function": function, "args": {"obj": [3, 1, 2]}}},
            "each": {"map": {"over": "{{ [1, 2] }}", "step": {"python": {"function": function}}}},
        },
    }


async def test_a_document_naming_a_module_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", python_modules=["json"]) as engine:
        with pytest.raises(DefinitionError) as caught:
            await engine.apply(doc("os:system"))
        paths = [p.path for p in caught.value.problems]
        assert paths == ["steps.call.python.function", "steps.each.map.step.python.function"]
        assert "allowed: json" in str(caught.value)
        assert await engine.store.list_workflows() == []
        await engine.apply(
            {
                "name": "ok",
                "steps": {"dump": {"python": {"function": "json:dumps", "args": {"obj": [1]}}}},
            }
        )
        run = await engine.run("ok", {}, timeout=10)
        assert run.info.status == "succeeded"
        assert run.steps["dump"].output == "[1]"


def exits(code: int = 0) -> None:
    raise SystemExit(code)


async def test_a_function_may_not_be_reached_through_another_module(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", python_modules=["json"]) as engine:
        for path in (
            "json:codecs.builtins.open",
            "json:decoder.re.compile",
            "json:codecs.open",
            "json:__builtins__.clear",
            "json:loads.__globals__.get",
            "json:JSONDecoder.mro",
            "json:JSONDecoder.__new__",
            "json.__init__:loads",
            "json.nosuchmodule:loads",
        ):
            with pytest.raises(DefinitionError, match="not a function defined in a module"):
                await engine.apply({"name": "esc", "steps": {"f": {"python": {"function": path}}}})
        assert engine.python.resolve("json:codecs.builtins.open") is None  # also at run time
        assert engine.python.resolve("json:dumps") is not None


async def test_a_step_that_raises_system_exit_fails_and_the_engine_goes_on(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        fn = f"{__name__}:exits"
        await engine.apply({"name": "bye", "steps": {"f": {"python": {"function": fn}}}})
        await engine.apply(
            {
                "name": "bye-async",
                "steps": {"f": {"python": {"function": f"{__name__}:exits_async"}}},
            }
        )
        for name in ("bye", "bye-async"):
            run = await engine.run(name, {}, timeout=10)
            assert run.info.status == "failed"
            assert run.steps["f"].error is not None
            assert "SystemExit" in run.steps["f"].error["message"]


async def exits_async(code: int = 0) -> None:
    raise SystemExit(code)


async def test_with_no_allow_list_nothing_may_be_imported_by_a_server_engine(
    tmp_path: Path,
) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", python_modules=()) as engine:
        with pytest.raises(DefinitionError, match="start the server with --python-module"):
            await engine.apply(doc("json:dumps"))


async def test_the_embedded_engine_imports_any_function_by_default(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        record = await engine.apply(doc("json:dumps"))
        assert record.version == 1


async def test_an_input_json_cannot_hold_is_refused_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    from legato import InputError

    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        await engine.apply({"name": "any", "steps": {"f": {"fail": "no"}}})
        with pytest.raises(InputError, match="JSON cannot"):
            await engine.start_run("any", {"big": 2**70})
        assert await engine.store.list_runs() == []


async def test_private_and_main_modules_are_never_imported_by_name(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", python_modules=["legato"]) as engine:
        with pytest.raises(DefinitionError, match="not a function defined in a module"):
            await engine.apply(
                {"name": "m", "steps": {"f": {"python": {"function": "legato.cli.__main__:main"}}}}
            )
