"""Loading, overrides, adapter-type resolution, hashing, rendering and the JSON Schema of configs."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import pytest
import yaml
from pydantic import Field

from peft_framework.adapters import registry
from peft_framework.adapters.base import AdapterMethod
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config import (
    SECTIONS,
    Config,
    ConfigWarning,
    adapter_config_classes,
    config_hash,
    json_schema,
    load_config,
    load_config_with_warnings,
    resolve_config,
    resolve_config_with_warnings,
    section_hash,
    to_yaml,
)
from peft_framework.config.schema import AdapterConfigBase, TrainConfig
from peft_framework.config.yamlio import dump_yaml, parse_yaml
from peft_framework.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ a registered type of our own
class ToyConfig(AdapterConfigBase):
    type: Literal["toy"] = "toy"
    toy_scale: float = Field(1.0, gt=0)


class ToyMethod(AdapterMethod):
    """Registered only so that config resolution sees a second type whose keys it knows."""

    name: ClassVar[str] = "toy"
    config_class: ClassVar[type[AdapterConfigBase]] = ToyConfig
    description: ClassVar[str] = "toy type of the config tests"

    def inject(self, model, config, adapter_name="default"):  # pragma: no cover - never called
        raise NotImplementedError

    def adapter_state_dict(self, model, adapter_name="default"):  # pragma: no cover
        raise NotImplementedError

    def load_adapter_state_dict(self, model, state_dict, adapter_name="default"):  # pragma: no cover
        raise NotImplementedError

    def saved_config(self, config, *, model, adapter_name="default"):  # pragma: no cover
        raise NotImplementedError

    def config_from_saved(self, saved):  # pragma: no cover
        raise NotImplementedError

    def set_active(self, model, adapter_name):  # pragma: no cover
        raise NotImplementedError

    def adapter_names(self, model):  # pragma: no cover
        raise NotImplementedError

    def active_adapter(self, model):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture()
def toy_type(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(
        registry._discover(), "toy", registry.AdapterSource("toy", f"{__name__}:ToyMethod", "tests")
    )
    yield "toy"
    registry._loaded.pop("toy", None)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- defaults
def test_empty_config_is_all_defaults_with_the_lora_adapter() -> None:
    config = resolve_config({})
    assert isinstance(config, Config) and type(config) is Config
    assert isinstance(config.adapter, LoraConfig)
    assert config.adapter == LoraConfig()
    assert config.train == TrainConfig()


def test_sections_written_without_keys_mean_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "model:\ndata:\n  clean:\nadapter:\ntrain:\n")
    assert load_config(path) == resolve_config({})


def test_json_and_yaml_files_load_the_same(tmp_path: Path) -> None:
    data = {"adapter": {"r": 4, "target_modules": ["q_proj"]}, "train": {"max_steps": 3}}
    a = load_config(_write(tmp_path / "c.json", json.dumps(data)))
    b = load_config(_write(tmp_path / "c.yaml", yaml.safe_dump(data)))
    assert a == b and a.adapter.r == 4


def test_yaml_12_exponent_floats() -> None:
    assert parse_yaml("lr: 1e-4")["lr"] == pytest.approx(1e-4)
    assert parse_yaml("lr: -3E5")["lr"] == -3e5
    # a string that looks like such a float is quoted when dumped, so it reads back as a string
    assert parse_yaml(dump_yaml({"rev": "1e5"})) == {"rev": "1e5"}
    config = resolve_config(parse_yaml("train:\n  learning_rate: 5e-5\n"))
    assert config.train.learning_rate == pytest.approx(5e-5)


# ------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize(
    ("override", "attr", "expected"),
    [
        ("adapter.r=32", ("adapter", "r"), 32),
        ("adapter.target_modules=[q_proj,v_proj]", ("adapter", "target_modules"), ["q_proj", "v_proj"]),
        ("adapter.target_modules=all-linear", ("adapter", "target_modules"), "all-linear"),
        ("adapter.use_rslora=true", ("adapter", "use_rslora"), True),
        ("train.learning_rate=1e-4", ("train", "learning_rate"), 1e-4),
        ("train.eval_steps=null", ("train", "eval_steps"), None),
        ("train.epochs=2", ("train", "epochs"), 2.0),
        ("model.revision='1e5'", ("model", "revision"), "1e5"),
        ("model.name_or_path=Qwen/Qwen2.5-0.5B", ("model", "name_or_path"), "Qwen/Qwen2.5-0.5B"),
        ("data.columns={output: answer}", ("data", "columns"), {"output": "answer"}),
        ("data.columns.output=answer", ("data", "columns"), {"output": "answer"}),
        ("data.validate.max_rejected_fraction=0.2", ("data", "validate_", "max_rejected_fraction"), 0.2),
        ("data.split.seed=7", ("data", "split", "seed"), 7),
    ],
)
def test_overrides_are_parsed_as_yaml(override: str, attr: tuple[str, ...], expected: Any) -> None:
    value: Any = resolve_config({"train": {"eval_steps": 5}}, [override])
    for name in attr:
        value = getattr(value, name)
    assert value == expected


def test_override_wins_over_file_and_later_override_wins(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "adapter:\n  r: 4\n")
    assert load_config(path).adapter.r == 4
    assert load_config(path, ["adapter.r=16"]).adapter.r == 16
    assert load_config(path, ["adapter.r=16", "adapter.r=2"]).adapter.r == 2


def test_overrides_do_not_mutate_the_input() -> None:
    data = {"adapter": {"r": 4}}
    resolve_config(data, ["adapter.r=8", "train.epochs=2"])
    assert data == {"adapter": {"r": 4}}


# --------------------------------------------------------------- adapter type resolution
def test_keys_of_another_registered_type_warn_and_are_dropped(toy_type: str) -> None:
    config, warns = resolve_config_with_warnings({"adapter": {"type": "lora", "r": 4, "toy_scale": 2.0}})
    assert isinstance(config.adapter, LoraConfig) and config.adapter.r == 4
    assert "toy_scale" not in config.adapter.model_dump()
    assert len(warns) == 1 and "toy: toy_scale" in warns[0] and "'lora'" in warns[0]
    with pytest.warns(ConfigWarning, match="toy_scale"):
        resolve_config({"adapter": {"toy_scale": 2.0}})


def test_switching_type_on_a_file_written_for_lora_is_valid(toy_type: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "adapter:\n  type: lora\n  r: 4\n  alpha: 32\n  toy_scale: 3\n")
    config, warns = load_config_with_warnings(path, ["adapter.type=toy"])
    assert isinstance(config.adapter, ToyConfig) and config.adapter.toy_scale == 3.0
    assert len(warns) == 1 and "lora: r" in warns[0] and "alpha" in warns[0]
    # the other type's own values are still validated when it is the chosen one
    with pytest.raises(ConfigError) as info:
        load_config(path, ["adapter.type=toy", "adapter.toy_scale=0"])
    assert info.value.problems[0].startswith("adapter.toy_scale: got 0")


def test_override_of_another_types_key_is_an_error(toy_type: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({}, ["adapter.toy_scale=2"])
    (line,) = info.value.problems
    assert line.startswith("adapter.toy_scale:") and "adapter.type=toy" in line


def test_key_of_no_type_is_an_error_with_did_you_mean_over_all_types(toy_type: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"adapter": {"toy_scal": 2}})
    (line,) = info.value.problems
    assert line.startswith("adapter.toy_scal:") and "did you mean 'adapter.toy_scale'" in line


def test_registered_types_have_config_classes(toy_type: str) -> None:
    classes = adapter_config_classes()
    assert classes["lora"] is LoraConfig and classes["toy"] is ToyConfig


# ------------------------------------------------------------------------------------- hashing
BASE_YAML = """\
# an experiment
model:
  name_or_path: builtin:tiny-llama
adapter:
  type: lora
  r: 4
  target_modules: [q_proj, v_proj]
train:
  epochs: 2
  learning_rate: 1.0e-4
  max_steps: 10
data:
  split: {validation: 0.2, test: 0.1}
"""

REORDERED_YAML = """\
data:
  split:
    test: 0.1        # same values, other order and style
    validation: 0.2
train:
  max_steps: 10
  learning_rate: 1e-4
  epochs: 2.0
adapter:
  target_modules:
    - q_proj
    - v_proj
  r: 4
model: {name_or_path: "builtin:tiny-llama"}
"""


def test_hash_ignores_key_order_formatting_and_explicit_defaults(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path / "a.yaml", BASE_YAML))
    b = load_config(_write(tmp_path / "b.yaml", REORDERED_YAML))
    c = load_config(
        _write(tmp_path / "c.json", json.dumps(yaml.safe_load(BASE_YAML.replace("1.0e-4", "0.0001"))))
    )
    rendered = load_config(_write(tmp_path / "d.yaml", to_yaml(a)))  # every default spelled out
    assert config_hash(a) == config_hash(b) == config_hash(c) == config_hash(rendered)
    for name in SECTIONS:
        assert section_hash(a, name) == section_hash(b, name)


def test_hash_changes_with_any_value_and_only_in_its_section(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path / "a.yaml", BASE_YAML))
    b = load_config(_write(tmp_path / "a.yaml", BASE_YAML), ["adapter.r=8"])
    assert config_hash(a) != config_hash(b)
    assert section_hash(a, "adapter") != section_hash(b, "adapter")
    for name in set(SECTIONS) - {"adapter"}:
        assert section_hash(a, name) == section_hash(b, name)
    c = load_config(tmp_path / "a.yaml", ["data.validate.labels=[x]"])
    assert section_hash(a, "data") != section_hash(c, "data") and section_hash(a, "train") == section_hash(
        c, "train"
    )


def test_hash_depends_on_the_adapter_type(toy_type: str) -> None:
    a = resolve_config({"adapter": {"type": "lora"}})
    b = resolve_config({"adapter": {"type": "toy"}})
    assert section_hash(a, "adapter") != section_hash(b, "adapter")


def test_hashes_are_sha256_hex_and_sections_are_checked() -> None:
    config = resolve_config({})
    for h in (config_hash(config), *(section_hash(config, s) for s in SECTIONS)):
        assert len(h) == 64 and int(h, 16) >= 0
    assert len({section_hash(config, s) for s in SECTIONS}) == len(SECTIONS)
    with pytest.raises(KeyError, match="allowed: model, data"):
        section_hash(config, "adaptor")


def test_hash_of_a_config_built_in_code_equals_the_loaded_one() -> None:
    in_code = Config(adapter=LoraConfig(r=4), train=TrainConfig(max_steps=3))
    loaded = resolve_config({"adapter": {"r": 4}, "train": {"max_steps": 3}})
    assert config_hash(in_code) == config_hash(loaded)


# ------------------------------------------------------------------------------------ rendering
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["adapter.target_modules=[q_proj,v_proj]", "train.learning_rate=3e-5", "model.revision='1e5'"],
        ["model.revision='null'", "data.columns={output: 'yes'}", "data.source=[a.jsonl, 'b: c.jsonl']"],
    ],
)
def test_render_round_trips(overrides: list[str], tmp_path: Path) -> None:
    config = load_config(REPO / "params" / "lora.yaml", overrides)
    text = to_yaml(config)
    again = load_config(_write(tmp_path / "r.yaml", text))
    assert again == config and config_hash(again) == config_hash(config)
    assert list(yaml.safe_load(text)) == list(SECTIONS)
    assert "validate:" in text and "validate_" not in text  # YAML names, not Python attribute names


# ------------------------------------------------------------------------- params.yaml and presets
def _all_keys(model: type, prefix: str = "") -> set[str]:
    from peft_framework.config.problems import single_model, yaml_fields

    keys = set()
    for key, (_, field) in yaml_fields(model).items():
        sub = single_model(field.annotation)
        keys.add(prefix + key)
        if sub is not None and key != "adapter":
            keys |= _all_keys(sub, f"{prefix}{key}.")
    return keys


def _has(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _missing(expected: set[str], data: dict[str, Any]) -> list[str]:
    return sorted(k for k in expected if not _has(data, k))


def test_params_yaml_lists_every_key_of_config_and_of_every_adapter_type() -> None:
    """`dvc exp run -S key=value` needs the key in params.yaml: every overridable key must be there."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    expected = _all_keys(Config)
    for cls in adapter_config_classes().values():
        expected |= {f"adapter.{k}" for k in _all_keys(cls)}
    missing = _missing(expected, data)
    assert not missing, "params.yaml lacks (add them, with a comment): " + ", ".join(missing)


def test_params_yaml_is_valid_and_warns_about_nothing() -> None:
    """The shipped file lists every type's keys at their defaults: no warning on every command (issue 28)."""
    config, warns = load_config_with_warnings(REPO / "params.yaml")
    assert warns == []


@pytest.mark.parametrize("name", sorted(adapter_config_classes()))
def test_every_adapter_type_is_one_override_away_on_params_yaml(name: str) -> None:
    """`-S adapter.type=X` alone switches the shipped file to any registered type (issue 28: bottleneck
    failed on the demo's LoRA target_modules)."""
    switched, warns = load_config_with_warnings(REPO / "params.yaml", [f"adapter.type={name}"])
    assert switched.adapter.type == name
    # the only line possible: the demo's own (non-default) LoRA targets, which bottleneck adapters do not use
    assert all("adapter.type is 'bottleneck'): adalora/ia3/lora: target_modules" in w for w in warns), warns
    assert len(warns) == (1 if name == "bottleneck" else 0)


def test_other_types_keys_warn_only_when_set_to_a_value_that_would_be_used(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["adapter"].update(init_r=24, variant="houlsby")  # adalora's and bottleneck's, not at their defaults
    path = _write(tmp_path / "p.yaml", yaml.safe_dump(data))
    _, warns = load_config_with_warnings(path)
    assert warns == [
        "adapter: ignoring keys of other adapter types (adapter.type is 'lora'): adalora: init_r; "
        "bottleneck: variant"
    ]
    # an override of another type's key: its default is harmless, any other value is an error
    config, warns = load_config_with_warnings(
        REPO / "params.yaml", ["adapter.type=bottleneck", "adapter.target_modules=null"]
    )
    assert config.adapter.type == "bottleneck" and warns == []
    with pytest.raises(ConfigError, match=r"adapter\.r: set by an override"):
        load_config_with_warnings(REPO / "params.yaml", ["adapter.type=ia3", "adapter.r=32"])


PRESETS = sorted((REPO / "params").glob("*.yaml"))


def test_there_is_a_lora_preset() -> None:
    assert REPO / "params" / "lora.yaml" in PRESETS


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_are_complete_and_valid_without_warnings(preset: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        config = load_config(preset)
    data = yaml.safe_load(preset.read_text())
    expected = _all_keys(Config) | {f"adapter.{k}" for k in _all_keys(type(config.adapter))}
    missing = _missing(expected, data)
    assert not missing, f"{preset.name} is not complete; missing: {', '.join(missing)}"


# ---------------------------------------------------------------------------------- JSON Schema
@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


def test_json_schema_is_a_valid_schema_with_a_branch_per_adapter_type(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    adapter = schema["properties"]["adapter"]
    branches = adapter.get("oneOf") or adapter.get("anyOf")
    refs = {b["$ref"].rsplit("/", 1)[-1] for b in branches}
    assert {cls.__name__ for cls in adapter_config_classes().values()} <= refs
    assert schema["properties"]["data"]["$ref"].endswith("DataConfig")
    assert "validate" in schema["$defs"]["DataConfig"]["properties"]


@pytest.mark.parametrize("name", ["params.yaml", "params/lora.yaml"])
def test_params_files_validate_against_the_json_schema(schema: dict[str, Any], name: str) -> None:
    jsonschema.validate(yaml.safe_load((REPO / name).read_text()), schema)


@pytest.mark.parametrize(
    "bad",
    [
        {"train": {"batch_size": 0}},
        {"train": {"lerning_rate": 1}},
        {"adapter": {"type": "lora", "bias": "some"}},
        {"adapter": {"type": "nope"}},
        {"model": {"task": "seq2seq"}},
    ],
)
def test_json_schema_rejects_what_the_loader_rejects(schema: dict[str, Any], bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        resolve_config(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
