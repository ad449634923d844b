"""Learning methods: how a student turns its labelled data into a training loss.

A method is a function ``(model, x, y, ctx) -> loss`` over one mini-batch. ``ctx`` is a
:class:`TrainContext` with the batch's generator, the domain box and the method's
parameters. Any method combines with any protocol.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .. import seeding
from . import rules


@dataclass(frozen=True)
class TrainContext:
    """What a method may use besides the batch."""

    generator: torch.Generator
    box: tuple[np.ndarray, np.ndarray] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    step: int = 0      # this batch's index within the current learn call (0-based)...
    steps: int = 0     # ...of this many steps (0: unknown); schedules such as GAIRAT's burn-in
    cohort: int = 1    # students whose batches are stacked in x (teachsim.agents.cohort); 1: one
    rows: tuple[int, ...] | None = None   # a ragged cohort's points per student (the rest of each block: padding)


def mean(per_point: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """A batch's mean loss; in a cohort, each student's mean, summed (the gradient each
    student's weights get is then exactly the one it would get alone)."""
    if ctx.cohort == 1:
        return per_point.mean()
    per = per_point.view(ctx.cohort, -1)
    if ctx.rows is None:
        return per.mean(1).sum()
    # a ragged cohort (erm on all points): each student's mean over its own rows, the
    # padding weighted 0; each real row's gradient is 1/rows, as mean() gives it alone
    n = torch.tensor(ctx.rows, dtype=per.dtype, device=per.device)
    real = torch.arange(per.shape[1], device=per.device)[None, :] < n[:, None]
    return (torch.where(real, per, torch.zeros_like(per)).sum(1) / n).sum()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """Mean cross-entropy (:func:`mean` in a cohort); alone, exactly ``F.cross_entropy``."""
    if ctx.cohort == 1:
        return F.cross_entropy(logits, y)
    return mean(F.cross_entropy(logits, y, reduction="none"), ctx)


def erm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """Empirical risk minimisation: cross-entropy on the labelled points."""
    return cross_entropy(model(x), y, ctx)


# -- adversarial training family (BETA-AT, LRAT and the methods they compare with) --------
#
# Every method below attacks the batch with the model in eval mode (then restores its
# mode), draws every random start from ``ctx.generator`` and keeps every iterate inside
# ``ctx.box``, so training stays deterministic under a seed. The training attacks take
# ``attack_steps`` steps of size ``2.5 * eps / attack_steps`` and return their *final*
# iterate, as the papers' code does (not the judge's best-iterate PGD).

ATTACK_PARAMS = rules.ATTACK_PARAMS   # eps, norm, attack_steps (agents/rules.py: torch-free)


def settings(method: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A method's parameters: its PARAMS defaults (if it has any) overridden by ``params``."""
    out = {k: p.default for k, p in getattr(method, "PARAMS", {}).items()}
    out.update(params)
    return out


def _settings(method: Callable[..., Any], ctx: TrainContext) -> dict[str, Any]:
    return settings(method, ctx.params)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the attack on the model in eval mode, then restore its mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@dataclass(frozen=True)
class AttackTrace:
    """What a training attack returns.

    Attributes:
        x_adv: the final iterate (detached), within ``eps`` of ``x`` and inside the box.
        kappa: per point, how many of the ``steps`` iterates checked *before* each step
            the model still classified correctly: GAIRAT's geometry value, 0..steps.
        final_correct: per point, whether the model classifies ``x_adv`` correctly.
    """

    x_adv: torch.Tensor
    kappa: torch.Tensor
    final_correct: torch.Tensor


def train_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | tuple[float, ...],
                 norm: str, steps: int, box=None, generator: torch.Generator | None = None, objective: str = "ce",
                 start: str = "ball") -> AttackTrace:
    """The training attack: ``steps`` steps of projected steepest ascent, final iterate.

    Args:
        eps: the radius; or, for stacked students (``generator`` a
            :class:`teachsim.seeding.Generators`, equal blocks of rows), one positive
            radius per student (the methods' ``STACKS_OVER``), each block attacked in its own ball.
        objective: ``"ce"``: cross-entropy on the true label (Madry; GAIRAT, MAIL);
            ``"kl"``: KL(p(x) || p(x_adv)) with p(x) fixed (TRADES).
        start: ``"ball"``: uniform in the eps-ball (Madry, GAIRAT); ``"near"``:
            ``0.001 * N(0, I)`` (the TRADES and MAIL code; a KL ascent cannot leave x itself).
    """
    from ..attacks.common import _view, as_box, ascent, clip, loss_per_point, project, random_in_ball

    b = as_box(box, x)
    x = x.detach()
    k = len(generator) if isinstance(generator, seeding.Generators) else 1   # students stacked in x
    radii = eps
    if isinstance(eps, tuple):   # each student's own radius and step, per row (its block)
        # the step is computed as alone, in Python's double, then rounded to float32 where
        # it multiplies, as a number would be: each row gets the bits it gets alone
        alpha = torch.tensor([2.5 * e / max(1, steps) for e in eps], dtype=x.dtype).repeat_interleave(len(x) // k)
        eps = torch.tensor(eps, dtype=x.dtype).repeat_interleave(len(x) // k)
        alpha, eps = (_view(v, x).to(x.device) for v in (alpha, eps))
    else:
        alpha = 2.5 * eps / max(1, steps)
    with _eval_mode(model):
        p_clean = None
        if objective == "kl":
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
        if not isinstance(radii, tuple) and eps <= 0:
            delta = torch.zeros_like(x)
        elif start == "ball":
            delta = random_in_ball(x, radii, norm, generator)
        else:
            delta = project(0.001 * seeding.randn(x.shape, generator).to(x.device), eps, norm)
        xa = clip(x + delta, b)
        kappa = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            kappa += (logits.detach().argmax(1) == y).long()
            if objective == "kl":
                obj = seeding.per_student(lambda z, p: F.kl_div(F.log_softmax(z, dim=1), p, reduction="sum")[None],
                                          k, logits, p_clean).sum()
            else:
                # log of the cross-entropy: per point the same ascent direction, no underflow
                obj = loss_per_point(logits, y, "ce").sum()
            (grad,) = torch.autograd.grad(obj, xa)
            with torch.no_grad():
                xa = clip(x + project(xa - x + alpha * ascent(grad, norm), eps, norm), b)
        xa = xa.detach()
        with torch.no_grad():
            final_correct = model(xa).argmax(1) == y
    return AttackTrace(xa, kappa, final_correct)


def _attack(model, x, y, ctx: TrainContext, s: Mapping[str, Any], **kw: Any) -> AttackTrace:
    return train_attack(model, x, y, eps=s["eps"], norm=s["norm"], steps=s["attack_steps"], box=ctx.box,
                        generator=ctx.generator, **kw)


# -- weight rules (pure, detached) -----------------------------------------------------

def gairat_weights(kappa: torch.Tensor, steps: int, lam: float) -> torch.Tensor:
    """GAIRAT's tanh weights (GAIR.py, ``func == "Tanh"``), normalised to batch mean 1.

    ``w = (1 + tanh(lam + 5 * (h - kappa) / h)) / 2`` with ``h = floor(steps / 2)``
    (at least 1), then ``w * B / sum(w)``. Small kappa (flipped early: close to the
    boundary) gets a large weight.
    """
    kappa = torch.as_tensor(kappa, dtype=torch.float32).detach()
    h = max(1, int(steps) // 2)
    w = (1 + torch.tanh(lam + 5 * (h - kappa) / h)) / 2
    return w * len(w) / w.sum()


def probabilistic_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MAIL's PM: the largest wrong-class softmax probability minus the true one (detached)."""
    p = F.softmax(logits.detach(), dim=1)
    p_true = p.gather(1, y[:, None]).squeeze(1)
    p_other = p.scatter(1, y[:, None], -1.0).amax(dim=1)
    return p_other - p_true


def mail_weights(pm: torch.Tensor, slope: float, bias: float) -> torch.Tensor:
    """MAIL's weights (mail_loss.py ``weight_assign``): ``3 * sigmoid(slope * (pm + bias))``.

    A fixed scale of 3, not normalised over the batch (as in the paper's code).
    """
    return 3 * torch.sigmoid(slope * (torch.as_tensor(pm, dtype=torch.float32).detach() + bias))


def lrat_weights(correct_iterates: torch.Tensor, steps: int) -> torch.Tensor:
    """LRAT local weight of the adversarial half of each pair [reconstruction].

    ``omega = 1 - c / (steps + 1)``, where ``c`` counts the iterates of the training
    attack the model still classified correctly: the ``steps`` checked before each step
    (GAIRAT's kappa) plus the final one, so ``c`` is in 0..steps+1. A point the attack
    never flipped gets 0 (its pair's weight all goes to the natural instance); a point
    misclassified from the start gets 1.
    """
    c = torch.as_tensor(correct_iterates, dtype=torch.float32).detach()
    return 1 - c / (int(steps) + 1)


# -- the methods -----------------------------------------------------------------------

def pgd_at(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """PGD-AT (Madry et al. 2018): cross-entropy at a PGD attack's point on the true label.

    The attack starts uniformly in the eps-ball and ascends the cross-entropy for
    ``attack_steps`` steps; the loss is the mean cross-entropy at its final iterate.
    """
    s = _settings(pgd_at, ctx)
    tr = _attack(model, x, y, ctx, s, objective="ce", start="ball")
    return cross_entropy(model(tr.x_adv), y, ctx)


def trades(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): CE(clean) + trades_beta * KL(p(clean) || p(adv)).

    The adversary starts at ``x + 0.001 * N(0, I)`` and ascends the KL with p(clean)
    fixed; in the loss, gradients flow through both p(clean) and p(adv) (the official code).
    """
    s = _settings(trades, ctx)
    tr = _attack(model, x, y, ctx, s, objective="kl", start="near")
    logits = model(x)
    # the target as log-probabilities: with F.softmax a class whose probability underflows to
    # 0 makes the target's gradient log(0) * 0 = NaN (a confident cnn on digits diverged)
    adv, clean = F.log_softmax(model(tr.x_adv), dim=1), F.log_softmax(logits, dim=1)
    if ctx.cohort == 1:
        kl = F.kl_div(adv, clean, reduction="batchmean", log_target=True)
    else:   # batchmean per student, on each student's rows (kl_div's exp: see seeding.per_student)
        kl = seeding.per_student(lambda a, c: F.kl_div(a, c, reduction="batchmean", log_target=True)[None],
                                 ctx.cohort, adv, clean).sum()
    return cross_entropy(logits, y, ctx) + s["trades_beta"] * kl


def beta_at(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """BETA-AT (Robey et al.): the defender minimises cross-entropy at the BETA attack's point.

    Non-zero-sum: the attacker maximises the targeted logit margin for every wrong class
    (``attack_steps`` steps each, uniform start) and keeps the class whose final margin
    is largest (:func:`teachsim.attacks.beta.beta`); the defender keeps the surrogate.
    """
    from ..attacks.beta import beta

    s = _settings(beta_at, ctx)
    with _eval_mode(model):
        xa = beta(model, x, y, eps=s["eps"], norm=s["norm"], box=ctx.box, generator=ctx.generator,
                  steps=s["attack_steps"], restarts=1)
    return cross_entropy(model(xa), y, ctx)


def lrat(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """LRAT (Gao et al. 2021), reconstructed: local reweighting inside each (x, x_adv) pair.

    Rule implemented (a reconstruction: the paper's own formula could not be read): the
    training attack is PGD-CE as in ``pgd-at``; with c_i the number of its iterates (the
    ``attack_steps`` before each step plus the final one) the model still classifies
    correctly, ``omega_i = 1 - c_i / (attack_steps + 1)`` (detached) and
    ``loss = mean_i [omega_i CE(f(x_adv_i), y_i) + (1 - omega_i) CE(f(x_i), y_i)]``.
    Every pair carries total weight 1 (no global reweighting); when the attack never
    flips x_i, the pair's weight all goes to the natural instance instead of vanishing.
    """
    s = _settings(lrat, ctx)
    tr = _attack(model, x, y, ctx, s, objective="ce", start="ball")
    omega = lrat_weights(tr.kappa + tr.final_correct.long(), s["attack_steps"])
    ce_adv = F.cross_entropy(model(tr.x_adv), y, reduction="none")
    ce_nat = F.cross_entropy(model(x), y, reduction="none")
    return mean(omega * ce_adv + (1 - omega) * ce_nat, ctx)


def gairat(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """GAIRAT (Zhang et al. 2021): PGD-AT with points weighted by their geometry value.

    kappa = iterates of the PGD-CE attack (uniform start) still classified correctly,
    checked before each of its ``attack_steps`` steps; weights :func:`gairat_weights`
    with ``gairat_lambda``, normalised to batch mean 1; loss = mean(w * CE(f(x_adv), y)).

    Burn-in: the paper's code trains unweighted until epoch 60 of 120. A student here
    learns many times, warm-starting, with no epoch count, so each learn call trains its
    first ``gairat_burn_in`` share of steps unweighted (plain PGD-AT), then reweights
    (reconstruction; 0 reweights from the first step).
    """
    s = _settings(gairat, ctx)
    tr = _attack(model, x, y, ctx, s, objective="ce", start="ball")
    ce = F.cross_entropy(model(tr.x_adv), y, reduction="none")
    if ctx.step < s["gairat_burn_in"] * ctx.steps:
        return mean(ce, ctx)
    w = seeding.per_student(lambda kappa: gairat_weights(kappa, s["attack_steps"], s["gairat_lambda"]),
                            ctx.cohort, tr.kappa)   # normalised per student
    return mean(w * ce, ctx)


def mail(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
    """MAIL-AT (Wang et al. 2021): PGD-AT with points weighted by their probabilistic margin.

    The PGD-CE attack starts at ``x + 0.001 * N(0, I)`` (the MAIL code); PM = largest
    wrong-class probability minus the true one at its final iterate; weights
    :func:`mail_weights` ``3 * sigmoid(mail_slope * (PM + mail_bias))``, detached, not
    normalised; loss = mean(w * CE(f(x_adv), y)).
    """
    s = _settings(mail, ctx)
    tr = _attack(model, x, y, ctx, s, objective="ce", start="near")
    logits = model(tr.x_adv)
    w = seeding.per_student(lambda pm: mail_weights(pm, s["mail_slope"], s["mail_bias"]), ctx.cohort,
                            probabilistic_margin(logits, y))
    return mean(w * F.cross_entropy(logits, y, reduction="none"), ctx)


# The built-in methods train a cohort's students as one batched model (agents.cohort):
# they take a per-student mean (mean, cross_entropy), draw through seeding's helpers (which
# accept a cohort's Generators) and treat each student's block of rows as its own. A
# method without STACKS (a user's) trains each student alone, with a plain generator.
for _m in (erm, pgd_at, trades, beta_at, lrat, gairat, mail):
    _m.STACKS = True  # type: ignore[attr-defined]

# What stacked students may differ in and still train as one batched model: the radius
# of a method whose only use of it is the training attack (train_attack takes one per
# student; the paper suite's two pgd-at radii then train together)
for _m in (pgd_at, trades, lrat, gairat, mail):
    _m.STACKS_OVER = ("eps",)  # type: ignore[attr-defined]

pgd_at.PARAMS = rules.PGD_AT  # type: ignore[attr-defined]
trades.PARAMS = rules.TRADES  # type: ignore[attr-defined]
beta_at.PARAMS = rules.BETA_AT  # type: ignore[attr-defined]
lrat.PARAMS = rules.LRAT  # type: ignore[attr-defined]
gairat.PARAMS = rules.GAIRAT  # type: ignore[attr-defined]
mail.PARAMS = rules.MAIL  # type: ignore[attr-defined]
