"""Unknown calculator keywords are errors (issue 11, failure 9).

ASE's base class files unknown keywords under ``parameters`` and ignores them:
``EquiformerCalculator(dispersion="d3bj")`` added nothing and said nothing (before D3 existed), and a
misspelled ``chekpoint=`` or ``dispersoin=`` was ignored the same way. Both calculators now raise ``TypeError`` naming the
keyword and the accepted ones, which live in one list per class (``keywords``).
"""

from __future__ import annotations

import inspect

import pytest

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.calculators.base import ASE_BASE_KEYWORDS
from equiformer_calc.service import RemoteEquiformerCalculator

from ..helpers import make_model


@pytest.mark.parametrize("cls", [EquiformerCalculator, RemoteEquiformerCalculator])
def test_keyword_list_is_the_signature(cls):
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    assert tuple(p.name for p in params) == cls.keywords


@pytest.mark.parametrize("kwargs, bad", [({"dispersoin": "d3bj"}, "'dispersoin'"), ({"chekpoint": "emt-small"},
                                                                                    "'chekpoint'")])
def test_unknown_keywords_raise_type_error_naming_them(kwargs, bad):
    with pytest.raises(TypeError, match=f"unexpected keyword argument\\(s\\) {bad}; accepted: checkpoint, model"):
        EquiformerCalculator(model=make_model(0), **kwargs)
    with pytest.raises(TypeError, match=f"{bad}; accepted: url, token, timeout"):
        RemoteEquiformerCalculator("http://127.0.0.1:1", **kwargs)


def test_ase_base_keywords_still_work(tmp_path):
    calc = EquiformerCalculator(model=make_model(0), label="run", directory=str(tmp_path))
    assert calc.label.endswith("run") and set(ASE_BASE_KEYWORDS) >= {"label", "directory"}


def test_remote_settings_are_parameters_without_the_token():
    calc = RemoteEquiformerCalculator("http://127.0.0.1:1/", token="secret", timeout=5.0, retries=0)
    params = calc.todict()
    assert params["url"] == "http://127.0.0.1:1" and params["timeout"] == 5.0 and params["retries"] == 0
    assert "secret" not in repr(params) and "token" not in params
    with pytest.raises(ValueError, match="url cannot be changed"):
        calc.set(url="http://elsewhere:8000")
