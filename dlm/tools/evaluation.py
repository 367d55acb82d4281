"""Side-by-side evaluation of decoding policies on the synthetic tasks (the CPU testbed of the demo model).

Each policy is a pipeline config; each task contributes seeded held-out prompts (see :mod:`dlm.tools.tasks.base`:
prompts disjoint from training). For every (task, policy) the report gives exact-match accuracy under the
task's scorer (every valid answer accepted), mean NFE per sequence, tokens committed per forward, and wall
time, all measured in one run so ratios between policies are fair. Policies compared by default are
LLaDA's one-token-per-step low-confidence remasking (Nie et al. 2025), Fast-dLLM threshold decoding
(Wu et al. 2025) when installed, and a fixed 4 tokens per step. Under ``torchrun`` the prompts are shared
out between the processes and the counts merged (docs/scaling.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from dlm.config import PipelineConfig, build_config, load_config, load_yaml
from dlm.errors import InputError
from dlm.distributed import World, gather_floats, gather_ints, shard
from dlm.tools.tasks import TASKS, Task

BASELINE_OVERRIDES: dict[str, dict[str, Any]] = {
    "one-per-step": {},
    "threshold-0.9": {"decoding.name": "threshold", "decoding.threshold": 0.9},
    "top4-per-step": {"iteration.steps": 2},
}


@dataclass(frozen=True)
class Policy:
    """A named pipeline config to evaluate."""

    name: str
    config: PipelineConfig


@dataclass(frozen=True)
class TaskResult:
    task: str
    kind: str  # "deterministic" or "many"
    policy: str
    n: int
    correct: int
    accuracy: float  # percent
    mean_nfe: float  # forwards per sequence
    tokens_per_forward: float  # committed tokens / forwards, over all sequences
    seconds: float  # wall time of the generation loops


def builtin_policies(overrides=None) -> list[Policy]:
    """The default comparison on the embedded demo model (threshold only when that strategy is installed)."""
    from dlm.config import default_config_path
    from dlm.registry import entries

    base = load_yaml(default_config_path())
    policies = []
    for name, extra in BASELINE_OVERRIDES.items():
        if extra.get("decoding.name") and extra["decoding.name"] not in entries("decoding"):
            continue
        merged = {**extra, **_as_mapping(overrides)}
        policies.append(Policy(name, build_config(base, source=f"<builtin {name}>", overrides=merged)))
    return policies


def _as_mapping(overrides) -> dict[str, Any]:
    from dlm.config import parse_overrides

    return parse_overrides(overrides)


def load_policies(paths: Sequence[str | Path], overrides=None) -> list[Policy]:
    """One policy per YAML file, named after the file (``examples/demo/one_per_step.yaml`` -> one_per_step)."""
    return [Policy(Path(p).stem, load_config(p, overrides)) for p in paths]


def evaluate(
    policies: Sequence[Policy],
    tasks: Sequence[str] | None = None,
    *,
    n: int = 200,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = True,
    world: World | None = None,
) -> list[TaskResult]:
    """Run every policy over ``n`` held-out prompts of each task; results per (task, policy).

    Under torchrun (``world`` of several data-parallel groups) each group evaluates every ``dp_size``-th
    prompt and the counts are summed over the groups, so every process returns what one process would
    (the time is the slowest group's).
    """
    from dlm.pipeline import Pipeline

    w = world or World()
    chosen: list[Task] = [TASKS[t] for t in (tasks or TASKS)]
    prompts = {t.name: shard(t.examples(n, seed=seed, split="eval"), w) for t in chosen}
    total = len(policies) * sum(len(p) for p in prompts.values())
    bar = tqdm(total=total, desc="eval", unit="seq", disable=not progress, dynamic_ncols=True)
    results = []
    for policy in policies:
        pipeline = Pipeline.from_config(policy.config)
        for task in chosen:
            correct = nfe = committed = 0
            seconds = 0.0
            examples = prompts[task.name]
            for i in range(0, len(examples), batch_size):
                chunk = examples[i : i + batch_size]
                out = pipeline.generate([ex.prompt for ex in chunk])
                if out.texts is None:
                    raise InputError(f"policy {policy.name!r}: the model has no tokenizer, cannot score text")
                correct += sum(task.score(ex.prompt, text) for ex, text in zip(chunk, out.texts))
                nfe += sum(out.nfe)
                committed += sum(sum(s) for s in out.tokens_per_step)
                seconds += out.seconds
                bar.update(len(chunk))
            if w.dp_size > 1:
                correct, nfe, committed = (sum(x) for x in zip(*gather_ints([correct, nfe, committed], w)))
                seconds = max(s[0] for s in gather_floats([seconds], w))
            results.append(TaskResult(
                task=task.name, kind=task.kind, policy=policy.name, n=n, correct=correct,
                accuracy=100.0 * correct / n, mean_nfe=nfe / n, tokens_per_forward=committed / max(nfe, 1),
                seconds=seconds,
            ))
    bar.close()
    return results


def suite_summary(results: Sequence[TaskResult]) -> list[dict[str, Any]]:
    """Per policy over all tasks: mean accuracy, mean NFE, and forwards relative to the first policy."""
    policies = list(dict.fromkeys(r.policy for r in results))
    rows = []
    for p in policies:
        mine = [r for r in results if r.policy == p]
        rows.append({
            "policy": p,
            "accuracy": sum(r.accuracy for r in mine) / len(mine),
            "mean_nfe": sum(r.mean_nfe * r.n for r in mine) / sum(r.n for r in mine),
            "seconds": sum(r.seconds for r in mine),
        })
    base = rows[0]["mean_nfe"] if rows else 1.0
    for row in rows:
        row["forward_reduction"] = base / row["mean_nfe"] if row["mean_nfe"] else float("inf")
    return rows


def markdown_table(results: Sequence[TaskResult]) -> str:
    """Per-task rows with the policies side by side, then the suite summary."""
    lines = [
        "| task | policy | accuracy (%) | NFE / seq | tokens / forward | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results_by_task(results):
        lines.append(
            f"| {r.task} ({r.kind}) | {r.policy} | {r.accuracy:.1f} | {r.mean_nfe:.2f} | "
            f"{r.tokens_per_forward:.2f} | {r.seconds:.2f} |"
        )
    summary = suite_summary(results)
    lines += [
        "",
        "| policy | mean accuracy (%) | NFE / seq | forward reduction vs first policy | time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['policy']} | {s['accuracy']:.1f} | {s['mean_nfe']:.2f} | "
            f"{s['forward_reduction']:.2f}x | {s['seconds']:.2f} |"
        )
    return "\n".join(lines)


def results_by_task(results: Sequence[TaskResult]) -> list[TaskResult]:
    order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in results))}
    return sorted(results, key=lambda r: order[r.task])


def plot(results: Sequence[TaskResult], path: Path) -> Path:
    """PNG of accuracy vs mean NFE: one colour per task, one marker per policy, a line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    policies = list(dict.fromkeys(r.policy for r in results))
    markers = "osD^v<>pXh*"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, task in enumerate(tasks):
        mine = sorted((r for r in results if r.task == task), key=lambda r: r.mean_nfe)
        color = f"C{i % 10}"
        ax.plot([r.mean_nfe for r in mine], [r.accuracy for r in mine], "-", color=color, alpha=0.5, label=task)
        for r in mine:
            ax.scatter(r.mean_nfe, r.accuracy, color=color, marker=markers[policies.index(r.policy) % len(markers)],
                       s=45, zorder=3)
    for j, p in enumerate(policies):
        ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=p)
    ax.set_xlabel("mean forwards (NFE) per sequence")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Demo testbed: accuracy vs forwards")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Sequence[TaskResult], out: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``accuracy_vs_nfe.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta or {}, "results": [asdict(r) for r in results], "summary": suite_summary(results)}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "accuracy_vs_nfe.png"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(results) + "\n")
    plot(results, paths["plot"])
    return paths
