"""Slow, obviously-correct restatements of the decoding rules of dParallel, dInfer (hierarchical, credit),
KLASS and FreeDave's verification, written from the papers and the authors' code as docs/decoding-algorithms.md
describes: plain Python loops over one row at a time, independent of dlm's tensor code. Tests pin dlm's
strategies to them on random logits."""

from __future__ import annotations

import math


def softmax(row: list[float]) -> list[float]:
    finite = [x for x in row if x != -math.inf]
    m = max(finite)
    e = [0.0 if x == -math.inf else math.exp(x - m) for x in row]
    z = sum(e)
    return [x / z for x in e]


def argmax(values: list[float], skip: int | None = None) -> int:
    best = None
    for i, v in enumerate(values):
        if i != skip and (best is None or v > values[best]):
            best = i
    return best


def entropy_choose(h: list[float], eligible: list[bool], tau: float, strict: bool) -> set[int]:
    """dParallel: the lowest-entropy eligible position, and every eligible one with entropy ≤ τ (< τ strict)."""
    idx = [i for i, e in enumerate(eligible) if e]
    if not idx:
        return set()
    lowest = min(idx, key=lambda i: (h[i], i))
    return {lowest} | {i for i in idx if (h[i] < tau if strict else h[i] <= tau)}


def hierarchical_choose(conf: list[float], eligible: list[bool], low: float, high: float) -> set[int]:
    """dInfer's hierarchy: each maximal run of eligible positions contributes the positions at its maximum
    when that is > low; plus every position > high; plus the row's most confident (first on a tie)."""
    chosen: set[int] = set()
    runs, current = [], []
    for i, e in enumerate(eligible):
        if e:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    for run in runs:
        top = max(conf[i] for i in run)
        chosen |= {i for i in run if conf[i] == top and conf[i] > low}
    idx = [i for i, e in enumerate(eligible) if e]
    chosen |= {i for i in idx if conf[i] > high}
    if idx:
        chosen.add(max(idx, key=lambda i: (conf[i], -i)))
    return chosen


def credit_steps(logits_seq, eligible_seq, *, alpha, power, decay, tau, mask_id):
    """dInfer's credit decoding over the steps of one block for one row: a dict credit[(position, token)] of
    float32 values (dInfer's table dtype), decayed before each step but the first, p^power added at each
    eligible position's argmax (whole vocabulary, float32 softmax), then the threshold rule (≥ τ, plus the
    most confident) on the fused logits ``logits + alpha·log(1 + credit)``. Returns per step {position: token}."""
    import torch

    f32 = lambda x: torch.tensor(x, dtype=torch.float32)
    credit: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for step, (logits, eligible) in enumerate(zip(logits_seq, eligible_seq)):
        if step:
            credit = {k: v * decay for k, v in credit.items()}
        for i, e in enumerate(eligible):
            if e:
                p = torch.softmax(torch.tensor(logits[i], dtype=torch.float32), -1)
                j = int(p.argmax())
                credit[i, j] = credit.get((i, j), f32(0.0)) + p[j] ** power
        conf, tok = [], []
        for i in range(len(eligible)):
            boost = {v: float(alpha * torch.log(c + 1)) for (pos, v), c in credit.items() if pos == i}
            fused = [x + boost.get(v, 0.0) for v, x in enumerate(logits[i])]
            t = argmax(fused, skip=mask_id)
            tok.append(t)
            conf.append(softmax(fused)[t])
        idx = [i for i, e in enumerate(eligible) if e]
        chosen = set()
        if idx:
            chosen = {max(idx, key=lambda i: (conf[i], -i))} | {i for i in idx if conf[i] >= tau}
        out.append({i: tok[i] for i in chosen})
    return out


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a + 1e-12) - math.log(b + 1e-12)) for a, b in zip(p, q))


def klass_steps(logits_seq, eligible_seq, quota_seq, step_seq, *, conf_tau, kl_tau, history, mask_id):
    """KLASS for one row: per position the previous distribution (zeros before the first forward) and the
    list of KLs; ready = confidence > conf_tau and the last ``history`` KLs < kl_tau (from in-block step
    history − 1 on); all ready committed, else the quota's most confident. Returns per step the chosen set."""
    width = len(logits_seq[0])
    previous = [[0.0] * len(logits_seq[0][0]) for _ in range(width)]
    kls: list[list[float]] = [[0.0] * history for _ in range(width)]
    out = []
    for logits, eligible, quota, step in zip(logits_seq, eligible_seq, quota_seq, step_seq):
        conf = []
        for i in range(width):
            p = softmax(logits[i])
            kls[i] = kls[i][1:] + [kl(p, previous[i])]
            previous[i] = p
            conf.append(p[argmax(logits[i], skip=mask_id)])
        idx = [i for i, e in enumerate(eligible) if e]
        ready = {i for i in idx if conf[i] > conf_tau and step >= history - 1 and all(v < kl_tau for v in kls[i])}
        if not ready:
            ready = set(sorted(idx, key=lambda i: (-conf[i], i))[: max(quota, 1)])
        out.append(ready)
    return out


def verify_chain(drafts: list[dict[int, int]], targets: list[dict[int, int]]) -> int:
    """FreeDave's verification as its reference loop states it: from draft 0, scan j = best+1 … K−1 and move
    to each j whose committed tokens all appear in target[best] (a later hit in the scan wins); repeat until a
    pass moves nowhere."""
    best = 0
    while best < len(drafts) - 1:
        ref = best
        for j in range(best + 1, len(drafts)):
            if all(targets[ref].get(p) == t for p, t in drafts[j].items()):
                best = j
        if best == ref:
            break
    return best


def klass_generate(forward, prompt: list[int], *, mask_id, gen_length, block_length, steps, conf_tau, kl_tau,
                   history):
    """KLASS's generation loop for one prompt, as its authors' LLaDA code runs it (``forward(ids)`` gives
    logits [L, V] of the whole canvas): previous distributions and KL history of every position carried
    across blocks; each block's steps stop early once it holds no mask; LLaDA's quota schedule; after the
    block's steps, dlm's addition: the remaining masks all eligible with a quota of all of them.
    Returns (tokens of the generation region, forwards)."""
    x = list(prompt) + [mask_id] * gen_length
    length, vocab = len(x), None
    previous = kls = None
    per_block = steps // (gen_length // block_length)
    nfe = 0
    for b in range(gen_length // block_length):
        s, e = len(prompt) + b * block_length, len(prompt) + (b + 1) * block_length
        m = sum(t == mask_id for t in x[s:e])
        quota = [m // per_block + (1 if i < m % per_block else 0) for i in range(per_block)]
        step = 0
        while any(t == mask_id for t in x[s:e]):
            logits = forward(x).tolist()
            nfe += 1
            if previous is None:
                vocab = len(logits[0])
                previous = [[0.0] * vocab for _ in range(length)]
                kls = [[0.0] * history for _ in range(length)]
            conf, tok = {}, {}
            for i in range(length):
                p = softmax(logits[i])
                kls[i] = kls[i][1:] + [kl(p, previous[i])]
                previous[i] = p
                tok[i] = argmax(logits[i], skip=mask_id)
                conf[i] = p[tok[i]]
            idx = [i for i in range(s, e) if x[i] == mask_id]
            ready = [i for i in idx if conf[i] > conf_tau and step >= history - 1 and all(v < kl_tau for v in kls[i])]
            if not ready:
                k = quota[step] if step < per_block else len(idx)
                ready = sorted(idx, key=lambda i: (-conf[i], i))[: max(k, 1)]
            for i in ready:
                x[i] = tok[i]
            step += 1
    return x[len(prompt):], nfe
