"""dlgpr_core.config: the one dotted-override parser and config-error explainer."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlgpr_core.config import (
    ConfigError,
    apply_overrides,
    explain_validation_error,
    known_keys,
    parse_override,
    set_dotted,
)


def test_parse_override_values_are_yaml() -> None:
    assert parse_override("lr=0.0003") == ("lr", 0.0003)
    assert parse_override("lr=3e-4") == ("lr", "3e-4")  # YAML 1.1: pydantic makes it a float
    assert parse_override(" cities = [A, B] ") == ("cities", ["A", "B"])
    assert parse_override("model.use_hi=false") == ("model.use_hi", False)
    assert parse_override("name=a=b") == ("name", "a=b")  # only the first '=' splits
    assert parse_override("checkpoint=") == ("checkpoint", None)
    assert parse_override("out=runs/x") == ("out", "runs/x")


@pytest.mark.parametrize("item", ["lr", "=3", " =3", ""])
def test_parse_override_rejects_non_key_value(item: str) -> None:
    with pytest.raises(ConfigError, match=r"is not key=value") as err:
        parse_override(item)
    assert repr(item) in str(err.value)  # the message names the bad item


def test_parse_override_bad_yaml_names_the_item() -> None:
    expected = r"'x=\[1, 2': the value is not valid YAML \(expected ','"
    with pytest.raises(ConfigError, match=expected):
        parse_override("x=[1, 2")


def test_set_dotted_creates_and_keeps_siblings() -> None:
    data: dict = {"a": {"keep": 1}, "n": None}
    set_dotted(data, "a.b.c", 2)
    set_dotted(data, "n.x", 3)  # a null section becomes a mapping
    set_dotted(data, "top", [1])
    assert data == {"a": {"keep": 1, "b": {"c": 2}}, "n": {"x": 3}, "top": [1]}


def test_set_dotted_refuses_to_cross_a_non_mapping() -> None:
    data = {"lr": 0.1, "model": {"levels": [2, 4]}}
    with pytest.raises(ConfigError, match=r"'lr.x': 'lr' is not a mapping \(it is float\)"):
        set_dotted(data, "lr.x", 1)
    with pytest.raises(ConfigError, match=r"'model.levels' is not a mapping \(it is list\)"):
        set_dotted(data, "model.levels.0", 1)
    with pytest.raises(ConfigError, match="empty key segment"):
        set_dotted(data, "model..x", 1)
    assert data == {"lr": 0.1, "model": {"levels": [2, 4]}}  # nothing half-applied


def test_apply_overrides_in_order() -> None:
    data = {"sft": {"lr": 1e-4}}
    out = apply_overrides(data, ["sft.lr=0.2", "stage=sft", "sft.lr=0.5"])
    assert out is data
    assert data == {"sft": {"lr": 0.5}, "stage": "sft"}
    with pytest.raises(ConfigError, match="'oops' is not key=value"):
        apply_overrides(data, ["stage=data", "oops"])


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_queries: int = 4
    fine_dim: int = 32


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(default=1e-4, gt=0)
    model: _Inner = Field(default_factory=_Inner)
    maybe: _Inner | None = None
    many: list[_Inner] = Field(default_factory=list)


def _explain(data: dict) -> str:
    with pytest.raises(ValidationError) as err:
        _Outer.model_validate(data)
    return explain_validation_error(err.value, _Outer, "invalid test config:")


def test_explain_names_unknown_keys_with_a_close_match() -> None:
    text = _explain({"lrr": 1, "model": {"n_querys": 2}, "lr": -1})
    lines = text.splitlines()
    assert lines[0] == "invalid test config:"
    assert "  unknown key 'lrr' (did you mean 'lr'?)" in lines
    assert "  unknown key 'model.n_querys' (did you mean 'n_queries'?)" in lines
    assert any(line.startswith("  lr: ") and "greater than 0" in line for line in lines)
    assert "  unknown key 'zzz'" in _explain({"zzz": 1}).splitlines()  # no close key: no hint


def test_known_keys_look_through_optional_and_lists() -> None:
    assert known_keys(_Outer, []) == ["lr", "model", "maybe", "many"]
    assert known_keys(_Outer, ["model"]) == ["n_queries", "fine_dim"]
    assert known_keys(_Outer, ["maybe"]) == ["n_queries", "fine_dim"]
    assert known_keys(_Outer, ["many", 0]) == ["n_queries", "fine_dim"]
    assert known_keys(_Outer, ["lr"]) == []
    assert known_keys(_Outer, ["nope"]) == []
    assert "did you mean 'fine_dim'" in _explain({"many": [{"fine_dims": 1}]})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
