"""Side-by-side evaluation of decoding policies on the synthetic tasks (the CPU testbed of the demo model).

Each policy is a pipeline config; each task contributes seeded held-out prompts (see :mod:`dlm.tools.tasks.base`:
prompts disjoint from training). For every (task, policy) the report gives exact-match accuracy under the
task's scorer (every valid answer accepted), mean NFE per sequence, tokens committed per forward, and wall
time, all measured in one run so ratios between policies are fair. Policies compared by default are
LLaDA's one-token-per-step low-confidence remasking (Nie et al. 2025), Fast-dLLM threshold decoding
(Wu et al. 2025) when installed, and a fixed 4 tokens per step; on the ``long`` task group (the long-answer
model, docs/long.md) every combination of cache {none, prefix, dual} and decoding {one token per step,
threshold 0.9}, the CPU version of Fast-dLLM's Table 1; on the ``fewshot`` group (the few-shot model,
docs/fewshot.md) the same six plus the factor rule with the dual cache, also printed in Table 1's layout
(:func:`table1`: per task, each pipeline's accuracy with its 95 % interval, tokens per forward, tokens per
second and speed-up). Under ``torchrun`` the prompts are shared out between
the processes and the counts merged (docs/scaling.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from dlm.config import PipelineConfig, build_config, load_config, load_yaml
from dlm.distributed import World, gather_floats, gather_ints, shard
from dlm.errors import InputError
from dlm.tools.tasks import ALL_TASKS, TASKS, Task

BASELINE_OVERRIDES: dict[str, dict[str, Any]] = {
    "one-per-step": {},
    "threshold-0.9": {"decoding.name": "threshold", "decoding.threshold": 0.9},
    "top4-per-step": {"iteration.steps": 2},
}
THRESHOLD = {"decoding.name": "threshold", "decoding.threshold": 0.9}
# cache x decoding on the long model, named like the files of examples/long/; the first is the baseline
LONG_OVERRIDES: dict[str, dict[str, Any]] = {
    "none": {"cache.name": "none"},
    "prefix": {"cache.name": "prefix"},
    "dual": {"cache.name": "dual"},
    "none_threshold": {"cache.name": "none", **THRESHOLD},
    "prefix_threshold": {"cache.name": "prefix", **THRESHOLD},
    "dual_threshold": {"cache.name": "dual", **THRESHOLD},
}
LONG_CONFIG = "long.yaml"  # dlm/configs/long.yaml: the embedded long model, one token per step, no cache
# the six, plus Fast-dLLM's factor rule (f = 1) with the dual cache, on the few-shot model: examples/fewshot/
FEWSHOT_OVERRIDES: dict[str, dict[str, Any]] = {
    **LONG_OVERRIDES, "dual_factor": {"cache.name": "dual", "decoding.name": "factor", "decoding.factor": 1.0},
}
FEWSHOT_CONFIG = "fewshot.yaml"  # dlm/configs/fewshot.yaml: the embedded few-shot model, blocks of 32, no cache


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
    token_accuracy: float | None = None  # percent of reference characters reproduced in place (deterministic tasks)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (the whole generation region, as Fast-dLLM's throughput) per second of wall time."""
        return self.tokens_per_forward * self.mean_nfe * self.n / self.seconds if self.seconds else float("inf")

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of the accuracy (percent), 95 % by default."""
        return wilson(self.correct, self.n, z)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (percent) of a proportion ``correct / n`` (Wilson, 1927); (0, 100) when n is 0."""
    if n <= 0:
        return 0.0, 100.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def token_agreement(answer: str, reference: str) -> tuple[int, int]:
    """(characters of ``answer`` equal to ``reference`` at the same place, the longer length): partial credit
    for long answers, where one wrong character fails exact match (deterministic tasks: one reference)."""
    return sum(a == b for a, b in zip(answer, reference)), max(len(answer), len(reference), 1)


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


def long_config_path() -> Path:
    """The long-answer pipeline (``dlm/configs/long.yaml``): embedded long model, 80 tokens in blocks of 16."""
    from importlib import resources

    return Path(str(resources.files("dlm") / "configs" / LONG_CONFIG))


def long_policies(overrides=None) -> list[Policy]:
    """Every cache {none, prefix, dual} x decoding {one token per step, threshold 0.9} on the long model,
    baseline (none, one token per step) first: the same six pipelines as ``examples/long/``."""
    return _grid(long_config_path(), LONG_OVERRIDES, overrides)


def fewshot_config_path() -> Path:
    """The few-shot pipeline (``dlm/configs/fewshot.yaml``): embedded few-shot model, 128 tokens in blocks of 32."""
    from importlib import resources

    return Path(str(resources.files("dlm") / "configs" / FEWSHOT_CONFIG))


def fewshot_policies(overrides=None) -> list[Policy]:
    """The Table 1 grid on the few-shot model: cache {none, prefix, dual} x {one token per step, threshold
    0.9}, then dual + factor; baseline first, the same seven pipelines as ``examples/fewshot/``."""
    return _grid(fewshot_config_path(), FEWSHOT_OVERRIDES, overrides)


def _grid(base_path: Path, grid: dict[str, dict[str, Any]], overrides) -> list[Policy]:
    base = load_yaml(base_path)
    return [
        Policy(name, build_config(base, source=f"<builtin {name}>", overrides={**extra, **_as_mapping(overrides)}))
        for name, extra in grid.items()
    ]


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

    The policies take turns batch by batch (after one untimed warm-up generation each), so a change in the
    machine's load mid-run affects every policy alike and the wall-time ratios between them stay fair.
    Under torchrun (``world`` of several data-parallel groups) each group evaluates every ``dp_size``-th
    prompt and the counts are summed over the groups, so every process returns what one process would
    (the time is the slowest group's).
    """
    from dlm.pipeline import Pipeline

    w = world or World()
    chosen: list[Task] = [ALL_TASKS[t] for t in (tasks or TASKS)]
    prompts = {t.name: shard(t.examples(n, seed=seed, split="eval"), w) for t in chosen}
    total = len(policies) * sum(len(p) for p in prompts.values())
    pipelines = [Pipeline.from_config(policy.config) for policy in policies]  # a model that cannot load: before the bar
    bar = tqdm(total=total, desc="eval", unit="seq", disable=not progress, dynamic_ncols=True)
    warm = chosen[0].examples(1, seed=seed, split="eval")[0].prompt
    for pipeline in pipelines:
        pipeline.generate([warm])  # warm-up: first-call costs stay out of the timing
    results = []
    for task in chosen:
        tally = {p.name: {"correct": 0, "nfe": 0, "committed": 0, "seconds": 0.0, "same": 0, "chars": 0}
                 for p in policies}
        examples = prompts[task.name]
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            for policy, pipeline in zip(policies, pipelines):
                out = pipeline.generate([ex.prompt for ex in chunk])
                if out.texts is None:
                    raise InputError(f"policy {policy.name!r}: the model has no tokenizer, cannot score text")
                mine = tally[policy.name]
                mine["correct"] += sum(task.score(ex.prompt, text) for ex, text in zip(chunk, out.texts))
                for ex, text in zip(chunk, out.texts):
                    same, chars = token_agreement(text, ex.answer)
                    mine["same"] += same
                    mine["chars"] += chars
                mine["nfe"] += sum(out.nfe)
                mine["committed"] += sum(sum(s) for s in out.tokens_per_step)
                mine["seconds"] += out.seconds
                bar.update(len(chunk))
        for policy in policies:
            mine = tally[policy.name]
            if w.dp_size > 1:
                keys = ("correct", "nfe", "committed", "same", "chars")
                mine.update(zip(keys, (sum(x) for x in zip(*gather_ints([mine[k] for k in keys], w)))))
                mine["seconds"] = max(s[0] for s in gather_floats([mine["seconds"]], w))
            results.append(TaskResult(
                task=task.name, kind=task.kind, policy=policy.name, n=n, correct=mine["correct"],
                accuracy=100.0 * mine["correct"] / n, mean_nfe=mine["nfe"] / n,
                tokens_per_forward=mine["committed"] / max(mine["nfe"], 1), seconds=mine["seconds"],
                token_accuracy=100.0 * mine["same"] / mine["chars"] if task.kind == "deterministic" else None,
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
    base_seconds = rows[0]["seconds"] if rows else 1.0
    for row in rows:
        row["forward_reduction"] = base / row["mean_nfe"] if row["mean_nfe"] else float("inf")
        row["speedup"] = base_seconds / row["seconds"] if row["seconds"] else float("inf")
    return rows


def speedups(results: Sequence[TaskResult]) -> dict[tuple[str, str], float]:
    """(task, policy) -> wall-time speed-up over the first policy on the same task (measured in the same run)."""
    first: dict[str, float] = {}
    for r in results:
        first.setdefault(r.task, r.seconds)
    return {(r.task, r.policy): first[r.task] / r.seconds if r.seconds else float("inf") for r in results}


def markdown_table(results: Sequence[TaskResult]) -> str:
    """Per-task rows with the policies side by side, then the suite summary."""
    speed = speedups(results)
    lines = [
        "| task | policy | accuracy (%) | NFE / seq | tokens / forward | time (s) | speed-up vs first policy "
        "| token accuracy (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results_by_task(results):
        tokens = "–" if r.token_accuracy is None else f"{r.token_accuracy:.1f}"
        lines.append(
            f"| {r.task} ({r.kind}) | {r.policy} | {r.accuracy:.1f} | {r.mean_nfe:.2f} | "
            f"{r.tokens_per_forward:.2f} | {r.seconds:.2f} | {speed[r.task, r.policy]:.2f}x | {tokens} |"
        )
    summary = suite_summary(results)
    lines += [
        "",
        "| policy | mean accuracy (%) | NFE / seq | forward reduction vs first policy | time (s) | speed-up vs first policy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['policy']} | {s['accuracy']:.1f} | {s['mean_nfe']:.2f} | "
            f"{s['forward_reduction']:.2f}x | {s['seconds']:.2f} | {s['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def table1(results: Sequence[TaskResult]) -> str:
    """Fast-dLLM's Table 1 layout (Wu et al., 2025, arXiv 2505.22618): one row per task, one column per
    pipeline; a cell gives the accuracy with its 95 % Wilson interval, tokens per forward, tokens per
    second and the wall-time speed-up over the first pipeline, all from one run."""
    speed = speedups(results)
    policies = list(dict.fromkeys(r.policy for r in results))
    cell = {(r.task, r.policy): r for r in results}
    lines = ["| task | " + " | ".join(policies) + " |", "|---|" + "---:|" * len(policies)]
    for task in dict.fromkeys(r.task for r in results):
        cells = []
        for p in policies:
            r = cell.get((task, p))
            if r is None:
                cells.append("–")
                continue
            lo, hi = r.interval()
            cells.append(f"{r.accuracy:.1f} [{lo:.1f}, {hi:.1f}]<br>{r.tokens_per_forward:.2f} tok/fwd<br>"
                         f"{r.tokens_per_second:.1f} tok/s ({speed[task, p]:.2f}x)")
        lines.append(f"| {task} (n = {cell[task, policies[0]].n if (task, policies[0]) in cell else '?'}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_by_task(results: Sequence[TaskResult]) -> list[TaskResult]:
    order = {t: i for i, t in enumerate(dict.fromkeys(r.task for r in results))}
    return sorted(results, key=lambda r: order[r.task])


def plot(results: Sequence[TaskResult], path: Path, *, x: str = "nfe") -> Path:
    """PNG of accuracy vs mean NFE (``x="nfe"``) or vs wall-time speed-up over the first policy
    (``x="speedup"``, log scale): one colour per task, one marker per policy (filled for the first 11 policies,
    hollow for the next 11), a line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    policies = list(dict.fromkeys(r.policy for r in results))
    speed = speedups(results)
    value = (lambda r: speed[r.task, r.policy]) if x == "speedup" else (lambda r: r.mean_nfe)  # noqa: E731
    markers = "osD^v<>pXh*"
    style = lambda j, color: dict(marker=markers[j % len(markers)], edgecolors=color,  # noqa: E731
                                  facecolors=color if (j // len(markers)) % 2 == 0 else "none")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, task in enumerate(tasks):
        mine = sorted((r for r in results if r.task == task), key=value)
        color = f"C{i % 10}"
        ax.plot([value(r) for r in mine], [r.accuracy for r in mine], "-", color=color, alpha=0.5, label=task)
        for r in mine:
            ax.scatter(value(r), r.accuracy, s=45, zorder=3, **style(policies.index(r.policy), color))
    for j, p in enumerate(policies):
        ax.scatter([], [], label=p, **style(j, "gray"))
    if x == "speedup":
        ax.set_xscale("log")
        ax.set_xlabel(f"wall-time speed-up over {policies[0]} (log scale)")
        ax.set_title("Accuracy vs speed-up")
    else:
        ax.set_xlabel("mean forwards (NFE) per sequence")
        ax.set_title("Accuracy vs forwards")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Sequence[TaskResult], out: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``accuracy_vs_nfe.png`` and ``accuracy_vs_speedup.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    speed = speedups(results)
    rows = [{**asdict(r), "speedup": speed[r.task, r.policy], "tokens_per_second": r.tokens_per_second,
             "interval": list(r.interval())} for r in results]
    payload = {"meta": meta or {}, "results": rows, "summary": suite_summary(results)}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "accuracy_vs_nfe.png",
             "speedup_plot": out / "accuracy_vs_speedup.png"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(results) + "\n\n" + table1(results) + "\n")
    plot(results, paths["plot"])
    plot(results, paths["speedup_plot"], x="speedup")
    return paths
