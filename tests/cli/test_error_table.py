"""The one error table (``equiformer_calc.errors``): every row names a class that exists, rows of a
subclass come before rows of its bases, and the CLI and the service answer an exception from the
same row (exit code and hint; HTTP status and type)."""

from __future__ import annotations

import importlib

import pytest

from equiformer_calc.errors import ERRORS, UNEXPECTED, classify


def _class_of(path: str) -> type:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseException), path
    return cls


def test_every_row_names_an_existing_exception_class_and_subclasses_come_first():
    classes = [_class_of(kind.exception) for kind in ERRORS]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1:]:
            assert not issubclass(later, earlier) or later is earlier, f"{later} is shadowed by {earlier}"


def test_classify_picks_the_most_specific_row():
    from equiformer_calc.graph import BudgetError, StructureError
    from equiformer_calc.predictor import MemoryBudgetError

    assert classify(MemoryBudgetError("x", 2.0, 1.0)).status == 507
    assert classify(BudgetError("x", 2.0, 1.0, "edges")).type == "too_large"
    assert classify(StructureError("x")).type == "invalid_structure"
    assert classify(FileNotFoundError("x")).exit_code == 2
    assert classify(RuntimeError("x")) is UNEXPECTED


@pytest.mark.parametrize("kind", ERRORS, ids=lambda k: k.exception.rsplit(":", 1)[-1])
def test_cli_and_service_answer_from_the_same_row(kind):
    from equiformer_calc.cli import _classify
    from equiformer_calc.service.routes import _api_error

    cls = _class_of(kind.exception)
    for args in (("boom",), ("boom", 2.0, 1.0), ("boom", 2.0, 1.0, "edges")):  # budget errors: estimate, limit
        try:
            exc = cls(*args)
            break
        except TypeError:
            continue
    assert classify(exc) == kind
    assert _classify(exc) == (kind.exit_code, kind.hint)
    api = _api_error(exc)
    assert (api.status, api.type) == (kind.status, kind.type) and "boom" in api.message
