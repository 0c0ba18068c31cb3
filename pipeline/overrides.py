"""Parameter overrides for the flow: the typed partial schema, the run form, and the `-S key=value` grammar.

The flow takes any subset of ``params.yaml`` (the schema of :class:`timetuning.infra.config.Params` with every field
optional, limits and descriptions kept). The deployment's form shows the whole schema prefilled with the current
``params.yaml``; only the keys whose value differs from ``params.yaml`` when the run starts count as overrides.
"""

# No `from __future__ import annotations`: pydantic builds models from these annotations at runtime.
import re
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from timetuning.infra.config import Params, apply_overrides
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
        data = ParamsOverrides.model_validate(overrides).model_dump(mode="json", exclude_none=True)
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
    schema = {**flow_schema, "definitions": {**flow_schema.get("definitions", {}), **params["definitions"]}}
    prop = flow_schema["properties"]["overrides"]
    schema["properties"] = {**flow_schema["properties"],
                            "overrides": {**params["properties"]["overrides"],
                                          **{k: prop[k] for k in ("position", "description") if k in prop},
                                          "title": "overrides"}}
    return schema
