"""Multi-order interactions between input variables (Ren et al., "A Unified Game-Theoretic
Interpretation of Adversarial Robustness", arXiv 2103.07364).

Players: the n input variables. For a vector input they are its features; for a square
image given as a flat vector (side x side) with ``grid=c`` they are the (side/c)^2 cells
of c x c pixels. A player that is *absent* takes the baseline value (the data mean); a
present one keeps the value of x.

Value of a coalition S (the paper's code, ``compute_interactions.py``, ``--out_type GT``):
``v(S) = log_softmax(f(x_S))[c]``, the log-probability of class c, with c the true label
(given) or, when no label is given, the class f predicts at x. ``output="logit"`` uses
the raw logit of c and ``output="log_odds"`` uses ``log p_c / (1 - p_c)``; a model with
one output per input (shape (B,)) is used as v directly.

Order-m interaction of players i != j (0 <= m <= n-2)::

    I^(m)(i,j) = E_{S subset N\\{i,j}, |S| = m} [ v(S+i+j) - v(S+i) - v(S+j) + v(S) ]

:func:`exact_interactions` enumerates every context (n <= 12); :func:`sampled_interactions`
averages over random contexts drawn uniformly among those of size m (the paper's
estimator), for orders m = int(r (n-2)) given by ratios r; :func:`interaction_profile`
averages |I^(m)| over points and pairs, on clean and on attacked inputs.
``coef_m = (n-1-m)/(n(n-1))`` is the weight of order m in the decomposition of
``v(N) - v(empty)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import seeding

EXACT_MAX_PLAYERS = 12
RATIOS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95)   # config.RATIOS, the [interactions] default
OUTPUTS = ("log_prob", "logit", "log_odds")


# -- players -------------------------------------------------------------------------------

def player_matrix(dim: int, grid: int | None = None) -> torch.Tensor:
    """(n, dim) 0/1 matrix: row p marks the input features of player p.

    ``grid=None``: one player per feature. ``grid=c``: the input is a flat square image
    of side ``sqrt(dim)`` and each player is one c x c cell (row-major cell order).
    """
    if grid is None:
        return torch.eye(dim)
    side = math.isqrt(dim)
    if side * side != dim or grid < 1 or side % grid:
        raise ValueError(f"grid={grid} needs a flat square image whose side is a multiple of {grid}; "
                         f"got dim={dim}")
    cells = side // grid
    rows = torch.arange(side).repeat_interleave(side) // grid
    cols = torch.arange(side).repeat(side) // grid
    owner = rows * cells + cols                          # cell index of every pixel
    return (owner[None, :] == torch.arange(cells * cells)[:, None]).float()


def grid_neighbours(n: int) -> list[list[int]]:
    """8-neighbours of each cell of a sqrt(n) x sqrt(n) grid (clipped at the borders)."""
    g = math.isqrt(n)
    out = []
    for p in range(n):
        r, c = divmod(p, g)
        out.append([rr * g + cc for rr in range(max(r - 1, 0), min(r + 2, g))
                    for cc in range(max(c - 1, 0), min(c + 2, g)) if (rr, cc) != (r, c)])
    return out


def orders_from_ratios(n: int, ratios: Sequence[float]) -> list[int]:
    """Orders m = int((n-2) r), as in the paper's code."""
    return [int((n - 2) * r) for r in ratios]


def utility_coef(n: int, m: int) -> float:
    """Weight (n-1-m)/(n(n-1)) of order m in the decomposition of v(N) - v(empty)."""
    return (n - 1 - m) / (n * (n - 1))


# -- values --------------------------------------------------------------------------------

def _value(f: Callable, inputs: torch.Tensor, label: int, output: str) -> torch.Tensor:
    out = f(inputs)
    if out.ndim == 1:
        return out
    if output == "log_prob":
        return torch.log_softmax(out, 1)[:, label]
    if output == "logit":
        return out[:, label]
    if output == "log_odds":   # log p / (1 - p) = z_c - logsumexp_{k != c} z_k
        others = torch.cat([out[:, :label], out[:, label + 1:]], 1)
        return out[:, label] - torch.logsumexp(others, 1)
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def _prepare(f, x, baseline, grid, label, output):
    x = torch.as_tensor(np.asarray(x, np.float32) if not torch.is_tensor(x) else x).float().flatten()
    baseline = torch.as_tensor(np.asarray(baseline, np.float32) if not torch.is_tensor(baseline)
                               else baseline).float().flatten()
    if baseline.shape != x.shape:
        raise ValueError(f"baseline shape {tuple(baseline.shape)} != input shape {tuple(x.shape)}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    P = player_matrix(x.numel(), grid)
    if label is None:
        with torch.no_grad():
            out = f(x[None])
        label = 0 if out.ndim == 1 else int(out.argmax(1)[0])
    return x, baseline, P, int(label)


def _masked_values(f, x, baseline, P, masks: torch.Tensor, label: int, output: str,
                   batch_size: int) -> torch.Tensor:
    """v(S) for each row of ``masks`` ((k, n) 0/1 over players)."""
    vals = []
    with torch.no_grad():
        for chunk in torch.split(masks.float(), batch_size):
            keep = chunk @ P                                   # (k, dim) 0/1 per feature
            vals.append(_value(f, baseline + (x - baseline) * keep, label, output).double())
    return torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)


def set_function(f: Callable, x, baseline, *, grid: int | None = None, label: int | None = None,
                 output: str = "log_prob", batch_size: int = 4096) -> torch.Tensor:
    """v(S) for all 2^n coalitions, indexed by bitmask (bit p set = player p present); n <= 12."""
    x, baseline, P, label = _prepare(f, x, baseline, grid, label, output)
    n = P.shape[0]
    if n > EXACT_MAX_PLAYERS:
        raise ValueError(f"exact computation enumerates 2^n coalitions; n={n} > {EXACT_MAX_PLAYERS}")
    bits = torch.arange(2 ** n)[:, None] >> torch.arange(n)[None, :] & 1
    return _masked_values(f, x, baseline, P, bits, label, output, batch_size)


def interactions_from_values(v: torch.Tensor, n: int, orders: Sequence[int] | None = None) -> torch.Tensor:
    """Exact I^(m)(i,j) from a set function ``v`` (length 2^n, bitmask-indexed).

    Returns a (len(orders), n, n) float64 tensor, symmetric, zero on the diagonal
    (``orders`` default: 0..n-2).
    """
    v = torch.as_tensor(v, dtype=torch.float64)
    orders = list(range(n - 1)) if orders is None else list(orders)
    masks = torch.arange(2 ** n)
    pop = (masks[:, None] >> torch.arange(n)[None, :] & 1).sum(1)
    out = torch.zeros(len(orders), n, n, dtype=torch.float64)
    for k, m in enumerate(orders):
        if not 0 <= m <= n - 2:
            raise ValueError(f"order {m} outside 0..{n - 2}")
        for i, j in itertools.combinations(range(n), 2):
            bi, bj = 1 << i, 1 << j
            S = masks[(pop == m) & ((masks & (bi | bj)) == 0)]
            dv = v[S | bi | bj] - v[S | bi] - v[S | bj] + v[S]
            out[k, i, j] = out[k, j, i] = dv.mean()
    return out


def exact_interactions(f: Callable, x, baseline, order_m: int | Sequence[int] | None = None, *,
                       grid: int | None = None, label: int | None = None, output: str = "log_prob",
                       batch_size: int = 4096) -> torch.Tensor:
    """Exact I^(m)(i,j) for every pair, enumerating all contexts (n <= 12 players).

    Args:
        f: inputs (B, dim) -> logits (B, C) (or values (B,)).
        x, baseline: one input and the baseline, shape (dim,).
        order_m: one order (returns (n, n)), a list of orders (returns (len, n, n)), or
            None for all orders 0..n-2.
        grid, label, output: see the module docstring.
    """
    v = set_function(f, x, baseline, grid=grid, label=label, output=output, batch_size=batch_size)
    n = int(round(math.log2(len(v))))
    if isinstance(order_m, (int, np.integer)):
        return interactions_from_values(v, n, [int(order_m)])[0]
    return interactions_from_values(v, n, order_m)


# -- Monte-Carlo estimator -----------------------------------------------------------------

@dataclass
class SampledInteractions:
    """Monte-Carlo estimates: ``mean[..., o, p]`` estimates I^(orders[o])(pairs[p]).

    ``mean`` and ``std`` (of Δv over the contexts) have shape (orders, pairs), or
    (points, orders, pairs) for a batch of inputs.
    """

    orders: list[int]
    pairs: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    samples: int
    n_players: int

    @property
    def sem(self) -> torch.Tensor:
        """Standard error of each estimate."""
        return self.std / math.sqrt(self.samples)


def sample_pairs(n: int, num_pairs: int, generator: torch.Generator | None = None,
                 adjacent: bool = False) -> torch.Tensor:
    """(P, 2) distinct player pairs: all pairs when there are at most ``num_pairs``; else
    random ones (with ``adjacent``, i uniform and j a random 8-neighbour of i on the grid,
    as in the paper's code)."""
    if adjacent:
        nb = grid_neighbours(n)
        every = sorted({tuple(sorted((i, j))) for i in range(n) for j in nb[i]})
    else:
        every = list(itertools.combinations(range(n), 2))
    if len(every) <= num_pairs:
        return torch.tensor(every, dtype=torch.long).reshape(-1, 2)
    chosen: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(chosen) < num_pairs:
        i = int(torch.randint(n, (1,), generator=generator))
        if adjacent:
            j = nb[i][int(torch.randint(len(nb[i]), (1,), generator=generator))]
        else:
            j = int(torch.randint(n - 1, (1,), generator=generator))
            j += j >= i
        key = (min(i, j), max(i, j))
        if key not in seen:
            seen.add(key)
            chosen.append(key)
    return torch.tensor(chosen, dtype=torch.long)


def sampled_interactions(f: Callable, x, baseline, orders: Sequence[int], pairs=None, *,
                         samples: int = 100, generator: torch.Generator | None = None,
                         grid: int | None = None, label=None, output: str = "log_prob",
                         num_pairs: int = 20, batch_size: int = 8192) -> SampledInteractions:
    """Monte-Carlo I^(m)(i,j): the mean of Δv(i,j,S) over ``samples`` contexts S drawn
    uniformly (independently) among the subsets of N\\{i,j} of size m (the paper's estimator).

    Args:
        f: inputs (B, dim) -> logits (B, C) (or values (B,)).
        x: one input (dim,) or a batch (B, dim); baseline: (dim,).
        orders: orders m (0 <= m <= n-2); see :func:`orders_from_ratios`.
        pairs: (P, 2) player pairs; default :func:`sample_pairs` (adjacent cells for a grid).
        samples: contexts per (point, order, pair).
        generator: torch generator for pairs and contexts (determinism).
        grid: cell size for square images (players = cells), None: players = features.
        label: class c per point (int or (B,)); default the class f predicts at x.
        output: ``log_prob`` (paper), ``logit`` or ``log_odds``.
        num_pairs: pairs drawn when ``pairs`` is None.
    """
    xs = torch.as_tensor(np.asarray(x, np.float32) if not torch.is_tensor(x) else x).float()
    single = xs.ndim == 1
    xs = xs.reshape(1, -1) if single else xs.flatten(1)
    labels = [None] * len(xs) if label is None else list(np.broadcast_to(np.asarray(label), (len(xs),)))
    P = player_matrix(xs.shape[1], grid)
    n = P.shape[0]
    orders = [int(m) for m in orders]
    for m in orders:
        if not 0 <= m <= n - 2:
            raise ValueError(f"order {m} outside 0..{n - 2} (n = {n} players)")
    pairs = (sample_pairs(n, num_pairs, generator, adjacent=grid is not None) if pairs is None
             else torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2))
    if (pairs[:, 0] == pairs[:, 1]).any():
        raise ValueError("pairs need two distinct players")
    npairs = len(pairs)
    ar = torch.arange(npairs)
    means = torch.zeros(len(xs), len(orders), npairs, dtype=torch.float64)
    stds = torch.zeros_like(means)
    for b in range(len(xs)):
        xb, base, _, lab = _prepare(f, xs[b], baseline, grid, labels[b], output)
        for k, m in enumerate(orders):
            # random keys; i and j get keys above any uniform so they are never in S
            keys = torch.rand(npairs, samples, n, generator=generator)
            keys[ar, :, pairs[:, 0]] = 2.0
            keys[ar, :, pairs[:, 1]] = 2.0
            ranks = keys.argsort(-1).argsort(-1)
            S = (ranks < m).float()                                   # (P, K, n)
            Si, Sj = S.clone(), S.clone()
            Si[ar, :, pairs[:, 0]] = 1.0
            Sj[ar, :, pairs[:, 1]] = 1.0
            Sij = Si.clone()
            Sij[ar, :, pairs[:, 1]] = 1.0
            masks = torch.stack([Sij, Si, Sj, S]).reshape(-1, n)
            v = _masked_values(f, xb, base, P, masks, lab, output, batch_size).reshape(4, npairs, samples)
            dv = v[0] - v[1] - v[2] + v[3]
            means[b, k] = dv.mean(1)
            stds[b, k] = dv.std(1, unbiased=True) if samples > 1 else torch.zeros(npairs, dtype=torch.float64)
    if single:
        means, stds = means[0], stds[0]
    return SampledInteractions(orders, pairs, means, stds, samples, n)


# -- profile over a test set ---------------------------------------------------------------

def default_grid(task) -> int | None:
    """Cell size used for a task's inputs: 2x2 cells for the 8x8 digits, else features."""
    return 2 if getattr(task, "name", None) == "digits" else None


def data_mean(task, seed: int = 0, n: int = 4096) -> np.ndarray:
    """The baseline: mean of ``n`` draws from the task's data distribution."""
    return task.data.sample(n, seeding.rng(seed, "interactions", "baseline")).mean(0).astype(np.float32)


def attack_points(model, task, x: np.ndarray, y: np.ndarray, judge: Mapping[str, Any], seed: int = 0) -> np.ndarray:
    """The judge's ``pgd`` (its eps, norm, steps, restarts, loss) from x against y."""
    from ..platform.judge import call_attack

    for p in model.parameters():
        p.requires_grad_(False)
    g = seeding.torch_generator(seed, "interactions", "attack")
    xa = call_attack("pgd", model, torch.from_numpy(np.asarray(x, np.float32)),
                      torch.from_numpy(np.asarray(y)).long(), judge, g, task.box)
    return xa.detach().cpu().numpy()


def interaction_profile(model, task, X, *, y=None, ratios: Sequence[float] = RATIOS, attacked=None,
                        judge: Mapping[str, Any] | None = None, grid: int | None | str = "auto",
                        baseline=None, samples: int = 100, num_pairs: int = 20, output: str = "log_prob",
                        seed: int = 0, generator: torch.Generator | None = None,
                        groups: Mapping[str, Any] | None = None):
    """Mean |I^(m)| per order ratio r over points and pairs, clean and attacked (as the
    paper compares them).

    Args:
        model: the student, inputs -> logits (put in eval mode here).
        task: its task (box, data distribution for the baseline, name for the grid).
        X: (B, dim) inputs; ``y``: their true labels (default: the model's predictions).
        ratios: order ratios r; m = int(r (n-2)).
        attacked: (B, dim) attacked inputs; if None and ``judge`` (a resolved judge
            table) is given they are made with the judge's pgd against y; if both are
            None only clean inputs are profiled.
        grid: cell size, None (features), or "auto" (:func:`default_grid`).
        baseline: default the data mean (:func:`data_mean`).
        samples, num_pairs, output: see :func:`sampled_interactions`.
        seed: seeds the baseline, the attack and (without ``generator``) pairs and contexts.
        groups: name -> boolean mask over the points: a profile per group (the same
            pairs and contexts), e.g. the points where the teacher-relative search found a
            counterexample and those where it did not (``teachsim interactions --split
            strong``); a group with no point gives no rows.

    Returns:
        DataFrame, one row per (group, input, ratio): ``group`` ("all" without groups),
        ``input`` (clean/attacked), ``ratio``,
        ``order`` m, ``n_players``, ``mean_abs`` (mean |I^(m)| over points and pairs),
        ``sem_abs`` (its standard error over points x pairs), ``mean`` (signed mean),
        ``coef`` = (n-1-m)/(n(n-1)), ``points``, ``pairs``, ``samples``.
    """
    import pandas as pd

    model.eval()
    X = np.asarray(X, np.float32)
    grid = default_grid(task) if grid == "auto" else grid
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(1).numpy()
    y = pred if y is None else np.asarray(y)
    if baseline is None:
        baseline = data_mean(task, seed)
    inputs = {"clean": X}
    if attacked is None and judge is not None:
        attacked = attack_points(model, task, X, y, judge, seed)
    if attacked is not None:
        inputs["attacked"] = np.asarray(attacked, np.float32)
    n = player_matrix(X.shape[1], grid).shape[0]
    orders = orders_from_ratios(n, ratios)
    g = generator if generator is not None else seeding.torch_generator(seed, "interactions", "contexts")
    pairs = sample_pairs(n, num_pairs, g, adjacent=grid is not None)
    masks = {"all": np.ones(len(X), bool)} if groups is None else {k: np.asarray(v, bool) for k, v in groups.items()}
    for name, mask in masks.items():
        if mask.shape != (len(X),):
            raise ValueError(f"groups[{name!r}]: expected a mask of {len(X)} points, got shape {mask.shape}")
    rows = []
    for name, xs in inputs.items():
        res = sampled_interactions(model, xs, baseline, orders, pairs, samples=samples, generator=g,
                                   grid=grid, label=y, output=output)
        for group, mask in masks.items():
            if not mask.any():
                continue
            flat = res.mean[torch.from_numpy(mask)].permute(1, 0, 2).reshape(len(orders), -1)  # (orders, points*pairs)
            for k, (r, m) in enumerate(zip(ratios, orders)):
                a = flat[k].abs()
                rows.append({"group": group, "input": name, "ratio": float(r), "order": m, "n_players": n,
                             "mean_abs": a.mean().item(),
                             "sem_abs": (a.std().item() / math.sqrt(a.numel())) if a.numel() > 1 else 0.0,
                             "mean": flat[k].mean().item(), "coef": utility_coef(n, m),
                             "points": int(mask.sum()), "pairs": len(pairs), "samples": samples})
    return pd.DataFrame(rows)


VIEWS = ("clean", "attacked", "margin")


def profiled_points(model, x, y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test points the model classifies correctly (the paper keeps only
    those); all points' first ``n`` where it gets none right."""
    with torch.no_grad():
        correct = model(torch.from_numpy(np.asarray(x, np.float32))).argmax(1).numpy() == np.asarray(y)
    keep = correct if correct.any() else ~correct
    return x[keep][:n], y[keep][:n]


def runner_up(model, X) -> np.ndarray:
    """The second most likely class of each input (the closest other category)."""
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(X, np.float32))).topk(2, dim=1).indices[:, 1].numpy()


def point_profiles(model, task, X, y, *, ratios: Sequence[float] = RATIOS, judge: Mapping[str, Any] | None = None,
                   attacked=None, grid: int | None | str = "auto", baseline=None, samples: int = 50,
                   num_pairs: int = 20, seed: int = 0):
    """Per point and order, mean I^(m) and mean |I^(m)| over the sampled pairs, in three views.

    - ``clean``: v = log p of the true class y at x;
    - ``attacked``: the same at x' (the judge's pgd against y, or ``attacked``);
    - ``margin``: v = log p_y - log p_k at x, with k the runner-up class at x. Its
      interactions are I_y - I_k: the part of the interactions that tells the true
      category from the closest other one (what is *specific* to the category).

    Every view uses the same pairs and the same contexts (the generator restarts from one
    state), so views differ by the model's values only, never by the draw.

    Returns:
        DataFrame, one row per (view, point, order): ``input`` (the view), ``point``
        (index into X), ``label`` (y), ``ratio``, ``order``, ``n_players``, ``mean``,
        ``mean_abs``, ``coef``.
    """
    import pandas as pd

    model.eval()
    X, y = np.asarray(X, np.float32), np.asarray(y)
    grid = default_grid(task) if grid == "auto" else grid
    if baseline is None:
        baseline = data_mean(task, seed)
    if attacked is None:
        if judge is None:
            raise ValueError("point_profiles needs the attacked points or a judge table to make them")
        attacked = attack_points(model, task, X, y, judge, seed)
    n = player_matrix(X.shape[1], grid).shape[0]
    orders = orders_from_ratios(n, ratios)
    g = seeding.torch_generator(seed, "interactions", "contexts")
    pairs = sample_pairs(n, num_pairs, g, adjacent=grid is not None)
    start = g.get_state()

    def means(xs, labels) -> torch.Tensor:   # (points, orders, pairs), same contexts every call
        g.set_state(start)
        return sampled_interactions(model, xs, baseline, orders, pairs, samples=samples, generator=g,
                                    grid=grid, label=labels, output="log_prob").mean
    clean = means(X, y)
    views = {"clean": clean, "attacked": means(np.asarray(attacked, np.float32), y),
             "margin": clean - means(X, runner_up(model, X))}
    rows = []
    for name, inter in views.items():
        for p in range(len(X)):
            for k, (r, m) in enumerate(zip(ratios, orders)):
                rows.append({"input": name, "point": p, "label": int(y[p]), "ratio": float(r), "order": m,
                             "n_players": n, "mean": inter[p, k].mean().item(),
                             "mean_abs": inter[p, k].abs().mean().item(), "coef": utility_coef(n, m)})
    return pd.DataFrame(rows)


def plot_profile(table, path: str | Path, title: str = "") -> Path:
    """Per-order curves of mean |I^(m)|, clean vs attacked (one curve per group and input
    where the table has groups), and the per-order share of the attacking utility coef_m
    (mean I(x) - mean I(x')) over all points when attacked rows exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "group" not in table:
        table = table.assign(group="all")
    grouped = table["group"].nunique() > 1
    both = set(table["input"]) >= {"clean", "attacked"}
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(10 if both else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    for (group, name), part in table.groupby(["group", "input"], sort=False):
        part = part.sort_values("ratio")
        ax.errorbar(part["ratio"], part["mean_abs"], yerr=part["sem_abs"], marker="o", capsize=2,
                    label=f"{group}, {name}" if grouped else name)
    ax.set_xlabel("order ratio r = m / (n - 2)")
    ax.set_ylabel("mean |I^(m)(i, j)|")
    ax.legend()
    if both:
        whole = table[table["group"] == table["group"].iloc[0]] if not grouped else table
        if grouped:   # all points: the groups' means weighted by their points
            whole = (whole.assign(w=whole["mean"] * whole["points"])
                     .groupby(["input", "ratio"], as_index=False)
                     .agg(w=("w", "sum"), points=("points", "sum"), coef=("coef", "first")))
            whole["mean"] = whole["w"] / whole["points"]
        c = whole[whole["input"] == "clean"].sort_values("ratio").reset_index(drop=True)
        a = whole[whole["input"] == "attacked"].sort_values("ratio").reset_index(drop=True)
        axes[0, 1].bar(c["ratio"].astype(str), c["coef"] * (c["mean"] - a["mean"]))
        axes[0, 1].set_xlabel("order ratio r")
        axes[0, 1].set_ylabel("coef_m (mean I(x) - mean I(x'))")
        axes[0, 1].set_title("per-order share of the attacking utility", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
