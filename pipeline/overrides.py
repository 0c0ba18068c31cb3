"""Parameter overrides for the flow: the typed partial schema, the run form, and the `-S key=value` grammar.

The flow takes any subset of ``params.yaml`` (the schema of :class:`timetuning.infra.config.Params` with every field
optional, limits and descriptions kept). The deployment's form shows the whole schema prefilled with the current
``params.yaml``; only the keys whose value differs from ``params.yaml`` when the run starts count as overrides.
"""

# No `from __future__ import annotations`: pydantic builds models from these annotations at runtime.
import re
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from timetuning.infra.config import Params, ParamsError, apply_overrides, format_validation_error, limit_words
from timetuning.infra.profiles import schema_leaves


def partial_model(model: type[BaseModel], name: str | None = None) -> type[BaseModel]:
    """The same schema with every field optional (nested sections too), descriptions and limits kept."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        if info.exclude:
            continue
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = partial_model(ann)
        elif info.metadata:  # limits (ge, le, ...) apply to the value, not to the None that means "unchanged"
            ann = Annotated[(ann, *info.metadata)]
        fields[key] = (Optional[ann], Field(default=None, description=info.description))  # noqa: UP045
    return create_model(name or f"Partial{model.__name__}", __config__=ConfigDict(extra="forbid"),
                        __doc__=model.__doc__, **fields)


ParamsOverrides = partial_model(Params, "ParamsOverrides")


def dotted_overrides(overrides: BaseModel | dict | None) -> dict[str, Any]:
    """Set fields of a partial params object as ``{"section.key": value}``.

    Nested sections (``train.backbone``) are walked into; lists and mappings (``shard_eval.sets``) stay whole.
    A plain dict with dotted keys is taken as it is.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, dict) and all("." in k for k in overrides):
        return dict(overrides)
    if isinstance(overrides, BaseModel):
        data = overrides.model_dump(mode="json", exclude_none=True)
    else:
        try:  # the project's wording for a refused value ("train.lr_head: must be > 0, got 0")
            data = ParamsOverrides.model_validate(overrides).model_dump(mode="json", exclude_none=True)
        except ValidationError as err:
            raise ParamsError(format_validation_error(err, "overrides")) from None
    return dict(schema_leaves(data, "overrides"))


def changed_overrides(base: Params, flat: dict[str, Any]) -> dict[str, Any]:
    """The overrides whose value differs from ``base``, in their validated form (the form sends every field,
    changed or not, and leaves out what is None inside lists and mappings)."""
    new = apply_overrides(base, flat).model_dump(mode="json")
    old = base.model_dump(mode="json")
    return {dotted: _lookup(new, dotted) for dotted in flat if _lookup(new, dotted) != _lookup(old, dotted)}


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data




def override_value(value: Any) -> str:
    """``value`` in the override grammar of ``dvc exp run -S`` (Hydra's): strings quoted, so ``tcp://h:1`` or
    ``/data/x`` stay strings; lists and mappings nested; mapping keys must be plain identifiers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # Hydra escapes \ only before '
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", str(k))]
        if bad:
            raise ValueError(f"overrides: mapping keys {bad} cannot be passed to `dvc exp run -S`; use plain names")
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"overrides: cannot pass a {type(value).__name__} to `dvc exp run -S`")


def form_schema(flow_schema: dict[str, Any]) -> dict[str, Any]:
    """The deployment's parameter schema with ``overrides`` shown as the whole params schema: every field with
    its description and limits (minimum, maximum, enum), none of them a "None" toggle; the form is prefilled with
    the deployment's default parameters (the current params.yaml), and the server refuses values out of limits."""
    from prefect.utilities.callables import parameter_schema

    def params_form(overrides: Params) -> None:  # only its signature matters: Prefect's schema of Params
        """Form."""

    params = parameter_schema(params_form).model_dump(exclude_unset=True)
    for definition in params["definitions"].values():
        for prop in definition.get("properties", {}).values():
            with_limits_stated(prop)
    schema = {**flow_schema, "definitions": {**flow_schema.get("definitions", {}), **params["definitions"]}}
    prop = flow_schema["properties"]["overrides"]
    schema["properties"] = {**flow_schema["properties"],
                            "overrides": {**params["properties"]["overrides"],
                                          **{k: prop[k] for k in ("position", "description") if k in prop},
                                          "title": "overrides"}}
    return schema


JSON_LIMITS = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le", "exclusiveMaximum": "lt"}


def _limits(schema: dict[str, Any]) -> str | None:
    """One value's limits in words (numbers, choices), None when it has none. An integer's exclusive bound becomes
    the inclusive one it means (> 0 is >= 1), so a refusal reads "0 is less than the minimum of 1"."""
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if schema.get("type") == "integer":
        for exclusive, inclusive, step in (("exclusiveMinimum", "minimum", 1), ("exclusiveMaximum", "maximum", -1)):
            if exclusive in schema:
                schema[inclusive] = int(schema.pop(exclusive)) + step
    bounds = {JSON_LIMITS[k]: v for k, v in schema.items() if k in JSON_LIMITS}
    return limit_words(**bounds) if bounds else None


def with_limits_stated(prop: dict[str, Any]) -> dict[str, Any]:
    """A form field's schema whose description ends with its limits in words ("Must be > 0.", "Must be between 0
    and 1.", "Each item must be > 0.", "Must be one of center, none."): Prefect's form shows the description, not
    the schema's minimum/maximum."""
    words = None
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    if len(options) == 1:
        value = options[0]
        if value.get("type") == "array":
            items = value.get("prefixItems") or ([value["items"]] if isinstance(value.get("items"), dict) else [])
            stated = {_limits(i) for i in items}
            if len(stated) == 1 and (each := stated.pop()):
                words = f"Each item must be {each}."
        elif limits := _limits(value):
            words = f"Must be {limits}."
    if words:
        if len(options) == 1 and "anyOf" in prop:
            words = words[:-1] + ", or empty."
        said = prop.get("description", "").rstrip()
        stop = "" if not said or said.endswith(".") else "."  # some descriptions end without a full stop
        prop["description"] = f"{said}{stop} {words}".strip()
    return prop
