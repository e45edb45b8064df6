"""Check the free-form option mappings of a recipe (``model.backbone_options``, ``model.head_options``,
``method.options``, add-on settings, ``data.*.options``) against the signature of what they configure, so a
typo is a :class:`~uda_perturb.errors.ConfigError` naming the key path and the closest valid name instead of
a ``TypeError`` deep inside a constructor."""
from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any, Callable, Mapping, Optional

from .config_schema import check_value
from .errors import ConfigError, UserError

# arguments the framework passes itself: not settable from an options mapping
FRAMEWORK_ARGS = frozenset({"self", "segmentor", "addons", "in_channels", "num_classes", "root", "split",
                            "transform"})


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool, dict[str, Any]]:
    """``(settable parameters, accepts **kwargs, type hints)`` of a class or function."""
    sig = inspect.signature(factory)
    params = {n: p for n, p in sig.parameters.items() if n not in FRAMEWORK_ARGS
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not evaluate here: check names only
        hints = {}
    return params, var_kw, hints


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], key: str,
                  forward: Optional[Callable[..., Any]] = None, what: str = "") -> None:
    """Raise a ``ConfigError`` for an option ``factory`` does not take (``forward`` receives its ``**kwargs``,
    as the perturbation add-on forwards to ``Perturber``) or whose value has the wrong type."""
    params, var_kw, hints = _parameters(factory)
    if forward is not None:
        fparams, var_kw, fhints = _parameters(forward)
        # the factory passes the forward target's positional parameters itself (the add-on gives Perturber its
        # attacks and defenses per domain): only its keyword-only settings are reachable through **kwargs
        fparams = {n: p for n, p in fparams.items() if p.kind == p.KEYWORD_ONLY}
        params, hints = {**fparams, **params}, {**fhints, **hints}
    for name, value in options.items():
        path = f"{key}.{name}"
        if name not in params:
            if var_kw:
                continue
            close = difflib.get_close_matches(str(name), list(params), n=1, cutoff=0.5)
            hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown option {path!r}{hint}; {what or getattr(factory, '__name__', 'it')} takes: "
                              f"{', '.join(sorted(params)) or '(no options)'}")
        if name in hints:
            check_value(value, hints[name], path)


def check_config_options(cfg: Any) -> None:
    """Check every option mapping of an :class:`~uda_perturb.config.ExperimentConfig`."""
    from . import data, methods, models  # noqa: F401  (fills the registries)
    from .perturb import Perturber
    from .registry import ADDONS, BACKBONES, DATASETS, HEADS, METHODS

    def get(registry: Any, name: str, key: str) -> Callable[..., Any]:
        try:
            return registry.get(name)
        except UserError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None

    m = cfg.model
    check_options(get(BACKBONES, m.backbone, "model.backbone"), m.backbone_options, "model.backbone_options",
                  what=f"backbone {m.backbone!r}")
    head = "aspp_v2" if m.head == "deeplabv2" else m.head
    check_options(get(HEADS, head, "model.head"), m.head_options, "model.head_options", what=f"head {m.head!r}")
    method = get(METHODS, cfg.method.name, "method.name")
    opts = dict(cfg.method.options)
    perturbation = opts.pop("perturbation", None)  # APODA's nested add-on settings
    check_options(method, opts, "method.options", what=f"method {cfg.method.name!r}")
    if isinstance(perturbation, Mapping):
        check_options(ADDONS.get("perturbation"), perturbation, "method.options.perturbation", forward=Perturber,
                      what="the perturbation add-on")
        check_values(ADDONS.get("perturbation"), perturbation, "method.options.perturbation")
    for i, spec in enumerate(cfg.method.addons):
        name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, Mapping) else None
        if not isinstance(name, str):
            raise ConfigError(f"config key 'method.addons[{i}]' must be a name or a mapping with 'name'")
        addon = get(ADDONS, name, f"method.addons[{i}]")
        if isinstance(spec, Mapping):
            settings = {k: v for k, v in spec.items() if k != "name"}
            check_options(addon, settings, f"method.addons[{i}]", forward=Perturber if name == "perturbation"
                          else None, what=f"add-on {name!r}")
            check_values(addon, settings, f"method.addons[{i}]")
    for key, d in dataset_entries(cfg):
        check_options(get(DATASETS, d.name, f"{key}.name"), d.options, f"{key}.options", what=f"dataset {d.name!r}")


def check_values(factory: Callable[..., Any], settings: Mapping[str, Any], key: str) -> None:
    """Build ``factory(**settings)`` once (an add-on needs no model), so that a value it refuses (``combine:
    summ``) is a ``ConfigError`` naming the key when the recipe is read, not a traceback once a run has begun."""
    try:
        factory(**settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def dataset_entries(cfg: Any) -> list[tuple[str, Any]]:
    """Every dataset of an :class:`~uda_perturb.config.ExperimentConfig` with its key: ``data.source``,
    ``data.target``, ``data.eval.<name>``."""
    return [("data.source", cfg.data.source), ("data.target", cfg.data.target),
            *((f"data.eval.{name}", d) for name, d in cfg.data.eval.items())]
