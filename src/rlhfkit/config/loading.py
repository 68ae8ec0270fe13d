"""Configs from layers of values: defaults < preset < YAML < keyword values < dotted `key=value` overrides.

Every layer is normalised the same way before it is merged (dotted keys nest, old names become their new
place), then `build` checks every key and type against the dataclass and its sections.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlhfkit.config.options import MISSING, SET_BY_DEMO
from rlhfkit.config.suggest import unknown_key
from rlhfkit.errors import ConfigError

C = TypeVar("C")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["a=1", "optim.lr=3e-4"]` -> `{"a": "1", "optim": {"lr": "3e-4"}}` (values stay text)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or non-mapping content is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


def normalise(cls: type, values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Dotted keys become nested sections and the old names in `cls.ALIASES` their new place(s). Done per
    layer, before layers merge, so a later layer wins whichever name either used; one place set twice in
    the same layer is a ConfigError."""
    aliases: Mapping[str, tuple[str, ...]] = getattr(cls, "ALIASES", {})
    tree: dict[str, Any] = {}
    for key, value in values.items():
        for target in aliases.get(str(key), (str(key),)):
            _put(tree, target.split("."), value, where)
    return tree


def _put(tree: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """Set `value` at `path` in `tree`; a mapping value is spread over its keys (which may be dotted too)."""
    *parents, leaf = path
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        where += part + "."
        if not isinstance(node, dict):
            raise ConfigError(f"config key {where[:-1]!r} is set both as a value and as a section")
    if isinstance(value, Mapping):
        child = node.setdefault(leaf, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {where + leaf!r} is set both as a value and as a section")
        for key, inner in value.items():
            _put(child, str(key).split("."), inner, f"{where}{leaf}.")
        return
    if leaf in node:
        raise ConfigError(f"config key {where + leaf!r} is given twice (an old name and the new one?)")
    node[leaf] = value


def build(cls: type[C], values: Mapping[str, Any], where: str = "", defaults: Any = None) -> C:
    """Instantiate a config dataclass from a (nested) mapping, checking every key and type. Fields not given
    come from `defaults` (the owner's default instance of a section) or else the class's defaults."""
    values = normalise(cls, values, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise unknown_key(cls, unknown[0], where, defaults)
    hints = typing.get_type_hints(cls)
    kwargs = {} if defaults is None else {name: getattr(defaults, name) for name in fields}
    for name, value in values.items():
        default = fields[name].default if defaults is None else getattr(defaults, name)
        kwargs[name] = _field_value(value, hints[name], default, where + name)
    missing = [name for name, f in fields.items() if name not in kwargs and _required(f)]
    if missing:
        raise ConfigError(f"missing required config key {where + missing[0]!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"{where[:-1]}: {exc}") from None  # a section's range check: say which section


def _required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _field_value(value: Any, tp: Any, default: Any, name: str) -> Any:
    """One field's value from `value`: a section is built over its default, anything else coerced."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {name!r} is a section: set its fields, e.g. {name}.x=...")
        section_default = default if dataclasses.is_dataclass(default) else None
        return build(tp, value, where=f"{name}.", defaults=section_default)
    if value == SET_BY_DEMO and default == SET_BY_DEMO:
        return value  # a saved demo config read back: the placeholder is the owner's to fill in
    return coerce(value, tp, name)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`; text (from the command line or quoted YAML) is parsed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        ):
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner:  # the first that takes it: `bool | Literal["auto"]` reads "true" as True
            try:
                return coerce(value, option, name)
            except ConfigError:
                if len(inner) == 1:
                    raise
        raise ConfigError(
            f"config key {name!r} must be one of {', '.join(_choice_names(inner))}, got {value!r}"
        )
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"config key {name!r} must be one of {', '.join(map(repr, args))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = [] if value.strip() == "" else parsed
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r} expects a list, got {value!r}")
        return tuple(coerce(v, args[0], name) for v in value)
    return _coerce_scalar(value, tp, name)


def _type_name(tp: Any) -> str:
    """An annotation as `--help` shows it: `int`, `Optional[int]`, `Literal['a', 'b']`, `bool | 'auto'`."""
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType) and len(inner) > 1:
        return " | ".join("bool" if a is bool else ", ".join(_choice_names([a])) for a in inner)
    return str(tp).replace("typing.", "") if typing.get_origin(tp) else tp.__name__


def _choice_names(types_: list[Any]) -> list[str]:
    """How the values of a union read in a message: a bool as true and false, a Literal as its values."""
    names: list[str] = []
    for tp in types_:
        if tp is bool:
            names += ["true", "false"]
        elif typing.get_origin(tp) is Literal:
            names += map(repr, typing.get_args(tp))
        else:
            names.append(getattr(tp, "__name__", str(tp)))
    return names


def _coerce_scalar(value: Any, tp: type, name: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"config key {name!r} expects {tp.__name__}, got {value!r}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # also YAML's `1e-5`, which PyYAML reads as text
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise TypeError(f"config key {name!r}: unsupported annotation {tp!r}")


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    **values: Any,
) -> C:
    """Defaults < `base` (a preset) < YAML at `path` < keyword `values` (None ones skipped) < overrides."""
    layers = [
        base or {},
        read_yaml(path) if path else {},
        {k: v for k, v in values.items() if v is not None},
        parse_overrides(overrides),
    ]
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, normalise(cls, layer))
    return build(cls, data)


def preset(name: str) -> dict[str, Any]:
    """The values of a packaged preset, `rlhfkit/configs/demo-NAME.yaml` (`src/rlhfkit/configs/` in the
    repository)."""
    from importlib.resources import files

    resource = files("rlhfkit") / "configs" / f"demo-{name}.yaml"
    if not resource.is_file():
        raise ConfigError(f"no preset {name!r}")
    return read_yaml(Path(str(resource)))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) that `build` accepts back."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    """Write the config as YAML; `load_config(type(config), path)` gives it back."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """Help lines `name (type, default X): help` for every field, nested sections dotted, then the old names
    still accepted. `defaults` is the section's default instance when its owner sets one (the RM's optimiser
    has its own learning rate)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = f.default if defaults is None else getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, prefix=f"{prefix}{f.name}.", defaults=value)
            continue
        default = "required" if value is MISSING else f"default {value!r}"
        if value == SET_BY_DEMO:
            default = "set by the demo"
        type_name = _type_name(tp)
        lines.append(f"  {prefix}{f.name} ({type_name}, {default}): {f.metadata.get('help', '')}")
    aliases = getattr(cls, "ALIASES", {})
    if aliases:
        lines.append("old names, still accepted (each sets the field(s) after it):")
        lines += [f"  {old} -> {' and '.join(new)}" for old, new in aliases.items()]
    return lines
