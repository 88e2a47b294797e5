"""The public surface: every public name is exported once from `numbeam`, as trio checks its own.

Users write ``import numbeam as nb`` and never import a private module (STYLE.md, practice 2).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pathlib
import types

import pytest

import numbeam as nb

# Subpackages whose public names are flattened into `nb.*` (docs/architecture.md, "Processes"
# and "OTP behaviours").
FLATTENED = ["numbeam.actors", "numbeam.supervision"]


def exported() -> list[tuple[str, object]]:
    return [(name, getattr(nb, name)) for name in nb.__all__]


def test_all_has_no_duplicates() -> None:
    assert len(nb.__all__) == len(set(nb.__all__))


@pytest.mark.parametrize("name", nb.__all__)
def test_name_in_all_is_exported(name: str) -> None:
    assert hasattr(nb, name), f"numbeam.__all__ lists {name!r} but numbeam has no such name"
    assert getattr(nb, name) is not None, f"numbeam.{name} is None (a placeholder?)"


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(nb).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(nb.__all__) == set()


def test_each_public_object_is_exported_under_one_name() -> None:
    names_by_object: dict[int, list[str]] = {}
    for name, value in exported():
        names_by_object.setdefault(id(value), []).append(name)
    assert [names for names in names_by_object.values() if len(names) > 1] == []


@pytest.mark.parametrize("package", FLATTENED)
def test_subpackage_public_names_are_reexported_from_numbeam(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", [])
    assert names, f"{package} has no __all__"
    missing = [n for n in names if n not in nb.__all__]
    assert missing == [], f"{package} exports {missing} that numbeam does not re-export"
    assert [n for n in names if getattr(module, n) is not getattr(nb, n)] == []


def test_exported_classes_and_functions_live_in_numbeam() -> None:
    foreign = [
        name
        for name, value in exported()
        if (inspect.isclass(value) or inspect.isfunction(value))
        and not value.__module__.startswith("numbeam")
    ]
    assert foreign == []


def test_exported_classes_and_functions_have_docstrings() -> None:
    undocumented = [
        name
        for name, value in exported()
        if (inspect.isclass(value) or inspect.isfunction(value)) and not inspect.getdoc(value)
    ]
    assert undocumented == []


def test_exported_exceptions_say_when_they_are_raised() -> None:
    for name, value in exported():
        if inspect.isclass(value) and issubclass(value, Exception):
            assert (inspect.getdoc(value) or "").startswith("Raised when"), name


def test_package_ships_py_typed_marker() -> None:
    assert (pathlib.Path(nb.__file__).parent / "py.typed").is_file()


def test_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("numbeam").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_offload_signature_is_the_contract() -> None:
    """`nb.offload(fn, /, *args, **kwargs)`: other packages (serving) call it this way."""
    params = list(inspect.signature(nb.offload).parameters.values())
    kinds = [(p.name, p.kind) for p in params]
    assert kinds == [
        ("fn", inspect.Parameter.POSITIONAL_ONLY),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    assert inspect.iscoroutinefunction(nb.offload)


def test_serving_is_a_namespace_whose_classes_are_also_flattened() -> None:
    # nb.serving.run / run_batch / stats are called through the namespace, as nb.pg.* are.
    assert {"run", "run_batch", "stats", "Serving", "Overloaded"} <= set(nb.serving.__all__)
    assert nb.Serving is nb.serving.Serving and nb.Overloaded is nb.serving.Overloaded


def test_telemetry_namespace_exports_its_functions() -> None:
    assert nb.__all__.count("telemetry") == 1
    names = ["attach", "attach_many", "detach", "execute", "list_handlers"]
    assert nb.telemetry.__all__ == names
    for name in names:
        fn = getattr(nb.telemetry, name)
        assert fn.__module__.startswith("numbeam") and inspect.getdoc(fn)


def test_observer_namespace_exports_url() -> None:
    assert nb.__all__.count("observer") == 1
    assert nb.observer.__all__ == ["url"]
    assert inspect.getdoc(nb.observer.url)
