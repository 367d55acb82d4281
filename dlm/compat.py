"""Which components compose: what each declares it needs of the others and what it guarantees them.

Every component class may declare two class attributes:

- ``provides: ClassVar[frozenset[str]]``: the *features* it guarantees its partners (an iteration manager
  that keeps drafts pending, a decoding rule that commits only a verified prefix, ...);
- ``requires: ClassVar[Mapping[str, str]]``: feature -> why it is needed, said so that a user understands
  the refusal (the reason is printed after ``cannot be used with ...:``).
- ``excludes: ClassVar[Mapping[str, str]]`` (optional): feature -> why a partner providing it cannot serve,
  refused the same way (``adablock`` cuts its window from the step's logits, which a candidate step cannot follow).

:data:`FEATURES` names the kind of component that provides each built-in feature, and what it means. A
requirement of a feature provided by kind ``model`` is checked against :func:`model_features` of the model's
:class:`~dlm.messages.ModelCapabilities` (models declare their capabilities, not features). A plugin may
declare features of its own, not listed here: a requirement of such a feature is met when either other
component provides it. Components that declare nothing (the defaults below) compose with everything, as
before plugin API 2.0 had declarations; the model checks of ``check(capabilities)`` stay as they are and are
reported together with the declared ones.

:meth:`dlm.pipeline.Pipeline.__init__` refuses a composition with one :class:`~dlm.errors.CompositionError`
listing every problem, one line each, naming both components; ``dlm validate`` reports the problems between
the iteration, decoding and cache sections without loading the model. ``python -m dlm.compat`` prints the
compatibility matrix of the built-in components (docs/configuration.md holds it; tests/test_docs.py keeps the
two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

from dlm.messages import ModelCapabilities

KINDS = ("iteration", "decoding", "cache")  # the components whose declarations are checked pairwise


@dataclass(frozen=True)
class Feature:
    kind: str  # the kind of component that provides it: "iteration", "decoding", "cache" or "model"
    meaning: str


FEATURES: dict[str, Feature] = {
    "drafts": Feature(
        "iteration",
        "keeps provisional tokens (a commit's Drafts) pending: a draft stays eligible until a step commits it"),
    "verified_prefix": Feature(
        "decoding",
        "commits only the leading run of each row's window that it verified: tokens the model predicts from an "
        "all-committed context (the other positions become drafts)"),
    "edits": Feature(
        "iteration",
        "keeps a row in a block its decoding strategy holds open (a commit's Edits) even with nothing pending, and "
        "ends such a row at an end token only once the block is released"),
    "step_budget": Feature(
        "iteration",
        "gives every window the schedule's step budget T (geometry.total_steps: its configured steps), over which a "
        "time schedule runs"),
    "edit_aware": Feature(
        "cache",
        "recomputes the K/V of placed tokens an editing strategy rewrote (state.edited) before reading them"),
    "candidate_steps": Feature(
        "decoding",
        "runs candidate steps: drafts K canvases in the window before the forward (Candidates) and keeps one"),
    "threshold_floor": Feature(
        "decoding",
        "decides with the larger of its own threshold and a window's ThresholdFloor (dInfer's iter_threshold)"),
    "blocks_in_flight": Feature(
        "decoding",
        "reads a window's BlocksInFlight: per block in flight, what passes its threshold, and at least the most "
        "confident position of each complete block (D2F's rule)"),
    "causal": Feature("model", "causal attention: a column sees only the columns before it"),
    "bidirectional": Feature("model", "bidirectional attention"),
    "block_causal": Feature("model", "block-causal attention"),
    "kv_cache": Feature("model", "the adapter runs through a KV store"),
    "soft_inputs": Feature(
        "model", "the adapter runs a plan's SoftInputs: stored soft embeddings fed into its inputs (its own way: "
                 "added to the token embeddings, or DiffusionGemma's self-conditioning block), and the expected "
                 "embeddings of its predictions recorded"),
    "noise_canvas": Feature(
        "model", "canvases start from uniformly random tokens that every step may redraft until the canvas is done; "
                 "no MASK token (DiffusionGemma)"),
    "revisable": Feature(
        "iteration",
        "starts each canvas from uniform noise and keeps every position of it pending (revisable) until a commit "
        "finishes the canvas, bounding its steps"),
    "finishes_canvases": Feature(
        "decoding",
        "redrafts a noise canvas every step (acceptance and renoising) and commits the whole canvas when it stops"),
    "layer_plans": Feature(
        "model", "runs per-layer plans (LayerPlans: per-layer row sets, attention probes, feature caches): dlm's "
                 "transformer in one process, not compiled"),
    "next_token": Feature(
        "model", "causal attention with next-token logits (logit shift 1): the prediction for a column is read at "
                 "the column before it, from the columns up to it only"),
}


# what a noise-canvas model needs of the other components, besides their own declarations
NOISE_NEEDS = (("iteration", "revisable"), ("decoding", "finishes_canvases"))

# model features that one forward cannot combine: components requiring the one and the other are refused together
# (dlm's transformer runs a plan's soft inputs or its per-layer plans, not both)
EXCLUSIVE = (("soft_inputs", "layer_plans"),)


def model_features(capabilities: ModelCapabilities) -> frozenset[str]:
    """The features a model with ``capabilities`` provides."""
    features = {capabilities.attention}
    if capabilities.canvas == "noise":
        features.add("noise_canvas")
    if capabilities.kv_cache:
        features.add("kv_cache")
    if capabilities.soft_inputs:
        features.add("soft_inputs")
    if capabilities.layer_plans:
        features.add("layer_plans")
    if capabilities.attention == "causal" and capabilities.logit_shift == 1:
        features.add("next_token")
    return frozenset(features)


def provides(component: Any) -> frozenset[str]:
    """What ``component`` (an instance or a class) declares it provides (none when undeclared)."""
    return frozenset(getattr(component, "provides", None) or ())


def requires(component: Any) -> Mapping[str, str]:
    """What ``component`` (an instance or a class) declares it requires, with the reasons (none when undeclared)."""
    return dict(getattr(component, "requires", None) or {})


def excludes(component: Any) -> Mapping[str, str]:
    """The features ``component`` declares a partner must not provide, with the reasons (none when undeclared)."""
    return dict(getattr(component, "excludes", None) or {})


def registered_name(kind: str, component: Any) -> str:
    """The registered name of ``component`` (instance or class) in ``kind``'s group, else its class name."""
    return _registered_name(kind, component if isinstance(component, type) else type(component))


@lru_cache(maxsize=None)
def _registered_name(kind: str, cls: type) -> str:
    from dlm.registry import entries

    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, entry in entries(kind).items():
        if target in entry.targets:
            return name
    return cls.__name__


def _providers(kind: str, feature: str) -> list[str]:
    """Registered components of ``kind`` that provide ``feature`` (names, in registry order)."""
    from dlm.registry import entries, resolve

    found = []
    for name in entries(kind):
        try:
            cls = resolve(kind, name)
        except Exception:  # a broken plugin is reported where it is used, not here
            continue
        if feature in provides(cls):
            found.append(name)
    return found


def _alternatives(kind: str, feature: str) -> str:
    names = _providers(kind, feature)
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f" (works with {kind} {listed})"


def problems(components: Mapping[str, Any], names: Mapping[str, str] | None = None,
             capabilities: ModelCapabilities | None = None) -> list[str]:
    """Every declared requirement the composition leaves unmet, one sentence each, naming both components.

    ``components``: kind -> component (instance or class) for some of ``iteration``, ``decoding``, ``cache``;
    ``names``: kind -> the name to print (default: the registered name; ``model`` for the model);
    ``capabilities``: the model's, to check requirements of model features (skipped when None). The components'
    own ``check(capabilities)`` is not run here (see :func:`model_problems`).
    """
    names = dict(names or {})
    name = lambda kind: names.get(kind) or registered_name(kind, components[kind])  # noqa: E731
    offered = {kind: provides(c) for kind, c in components.items()}
    if capabilities is not None:
        offered["model"] = model_features(capabilities)
    found = []
    if capabilities is not None and capabilities.canvas == "noise":  # every component must know noise canvases
        for kind, feature in NOISE_NEEDS:
            if kind in components and feature not in offered[kind]:
                found.append(f"{kind} {name(kind)!r} cannot be used with model {names.get('model', 'model')!r}: the "
                             f"model's canvases start from noise, with no MASK token; it needs {kind} "
                             f"{_providers(kind, feature) or [feature]}")
    asked = {kind: set(requires(components[kind])) for kind in KINDS if kind in components}
    for one, other in EXCLUSIVE:
        for k1, k2 in ((a, b) for a in asked for b in asked if a != b and one in asked[a] and other in asked[b]):
            found.append(f"{k1} {name(k1)!r} cannot be used with {k2} {name(k2)!r}: it feeds the model soft inputs "
                         f"({one}) and {k2} {name(k2)!r} plans the forward per layer ({other}); a forward runs one "
                         "or the other")
    for kind in [k for k in KINDS if k in components]:
        for feature, reason in excludes(components[kind]).items():
            found += [f"{kind} {name(kind)!r} cannot be used with {p} {name(p)!r}: {reason}"
                      for p in offered if p != kind and feature in offered[p]]
        for feature, reason in requires(components[kind]).items():
            known = FEATURES.get(feature)
            partners = [known.kind] if known else [k for k in offered if k != kind]
            partners = [p for p in partners if p in offered and p != kind]
            if not partners or any(feature in offered[p] for p in partners):
                continue  # met, or its provider is not part of this check (e.g. no model yet)
            if partners == ["model"]:
                found.append(f"{kind} {name(kind)!r} cannot be used with model {names.get('model', 'model')!r}: "
                             f"{reason}")
                continue
            if known:
                (p,) = partners
                found.append(f"{kind} {name(kind)!r} cannot be used with {p} {name(p)!r}: {reason}"
                             + _alternatives(p, feature))
            else:  # a plugin's own feature: neither partner provides it
                with_ = " or ".join(f"{p} {name(p)!r}" for p in partners)
                found.append(f"{kind} {name(kind)!r} cannot be used with {with_}: {reason}")
    return found


def model_problems(kind: str, component: Any, capabilities: ModelCapabilities) -> list[str]:
    """Why ``component`` (an instance of ``kind``) cannot serve a model with ``capabilities``: its own
    ``check(capabilities)`` and its declared model requirements (reasons only, without the names)."""
    check = getattr(component, "check", None)
    own = check(capabilities) if callable(check) else None
    declared = [_reason(p) for p in problems({kind: component}, capabilities=capabilities)]
    return ([own] if own else []) + declared


# --- the compatibility matrix ----------------------------------------------------------------------------


def builtin_names(kind: str) -> list[str]:
    """The names dlm's own distribution registers for ``kind`` (pyproject.toml), sorted."""
    from importlib.metadata import distribution

    from dlm.registry import GROUPS

    return sorted(ep.name for ep in distribution("dlm").entry_points if ep.group == GROUPS[kind])


def _classes(kind: str) -> dict[str, type]:
    from dlm.registry import resolve

    return {name: resolve(kind, name) for name in builtin_names(kind)}


def refused_pairs(rows: str, columns: str) -> dict[tuple[str, str], list[str]]:
    """(row name, column name) -> the problems of each refused pair of built-ins of two kinds."""
    a, b = _classes(rows), _classes(columns)
    out = {}
    for ra, ca in a.items():
        for rb, cb in b.items():
            found = problems({rows: ca, columns: cb}, {rows: ra, columns: rb})
            if found:
                out[ra, rb] = found
    return out


def _reason(problem: str) -> str:
    return problem.split(": ", 1)[1]


def matrix(rows: str, columns: str) -> str:
    """A markdown table of the built-ins of ``rows`` x ``columns``: ✓ where they compose, a note number where
    they are refused, and the notes (the declared reasons) below it."""
    refused = refused_pairs(rows, columns)
    if not refused:
        return f"Every {rows} × {columns} pair of built-ins composes."
    notes: list[str] = []
    row_names, col_names = builtin_names(rows), builtin_names(columns)
    lines = [f"| {rows} \\ {columns} | " + " | ".join(f"`{c}`" for c in col_names) + " |",
             "| --- |" + " :---: |" * len(col_names)]
    for r in row_names:
        cells = []
        for c in col_names:
            if (r, c) not in refused:
                cells.append("✓")
                continue
            reason = "; ".join(_reason(p) for p in refused[r, c])
            if reason not in notes:
                notes.append(reason)
            cells.append(f"✗{notes.index(reason) + 1}")
        lines.append(f"| `{r}` | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)


def _model_requirements() -> list[str]:
    out = []
    for kind in KINDS:
        for name, cls in _classes(kind).items():
            for feature, reason in requires(cls).items():
                if feature in FEATURES and FEATURES[feature].kind == "model":
                    what = {"next_token": "a model with next-token logits",
                            "soft_inputs": "a model taking soft inputs",
                            "layer_plans": "a model that runs per-layer plans"}.get(feature, f"a {feature} model")
                    out.append(f"- {kind} `{name}` needs {what}: {reason}")
    needs = " and ".join(f"{kind} {' or '.join(f'`{n}`' for n in _providers(kind, feature))} ({feature})"
                         for kind, feature in NOISE_NEEDS)
    out.append(f"- a noise_canvas model (`diffusion_gemma`) needs {needs}: its canvases start from noise, with no "
               "MASK token, and every position stays revisable until the canvas is done")
    return out


PAIRS = (("decoding", "iteration"), ("iteration", "cache"), ("decoding", "cache"))


def compatibility_section() -> str:
    """The generated part of docs/configuration.md's compatibility section (between its markers)."""
    parts = []
    for rows, columns in PAIRS:
        parts.append(f"**{rows} × {columns}**\n\n{matrix(rows, columns)}")
    model = _model_requirements()
    if model:
        parts.append("**Declared model requirements** (besides each component's own model check)\n\n"
                     + "\n".join(model))
    return "\n\n".join(parts)


def _main(argv: Iterable[str] | None = None) -> int:
    print(compatibility_section())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
