"""Local expectation gradients (Titsias & Lázaro-Gredilla)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad._numerics import upcast
from latentgrad._validation import own_samples
from latentgrad.distributions import require
from latentgrad.estimators._base import (
    Estimate,
    LatentDistribution,
    check_estimate,
    evaluate_loss,
    zero_forward,
)
from latentgrad.estimators.local_reparam import (
    ChainLossFn,
    Conditional,
    LocalReparam,
    check_layer,
    flip_correction,
    local_estimate,
)


class LocalExpectation(LocalReparam):
    """Local expectation gradients: sum each unit over its values given its Markov blanket.

    For a sample ``z`` and each unit ``i`` of a factorized ``q``, the loss is evaluated at every
    value ``c`` of unit ``i`` with every other variable kept at its sampled value, and the
    score-function term of unit ``i`` is replaced by its expectation over ``z_i`` given the
    other variables [1]:

        sum_i sum_c w_i(c) F(z; z_i = c) grad log q(z_i = c | parents) + grad_theta F(z),

    ``w_i(c) = q(z_i = c | Markov blanket)``. This is the Rao-Blackwellization of the
    likelihood-ratio estimator over each ``z_i`` given all other variables, hence unbiased.

    **One stochastic layer** (a call): unit ``i`` has no children, ``w_i(c) = q_i(c)`` and the
    estimate is ``sum_i sum_c grad q_i(c) F(z; z_i = c)``: exactly :class:`LocalReparam`'s
    computation (the same code; see there for the shapes and the row layout).

    **Several stochastic layers** (:meth:`chain`): this is where the two differ. When unit
    ``i`` of layer ``l`` changes, :meth:`LocalReparam.chain` re-simulates layers ``l+1..L`` from
    common random numbers; local expectation gradients keep every other variable, the layers
    above included, at its sampled value and weight value ``c`` by the conditional given the
    Markov blanket,

        w_i(c) ∝ q(z_i = c | z_{l-1}) q(z_{l+1} | z_l with z_i = c)

    (normalized over ``c``; ``w_i = q_i`` in the top layer, which has no children). It needs
    one extra evaluation of ``conditionals[l]`` on layer ``l``'s variants instead of the
    re-simulation, and no noise shared between layers.

    The distribution (every layer's, with :meth:`chain`) must declare ``has_local_variants``
    and ``has_noise`` (a call samples as :class:`LocalReparam` does).

    Args:
        num_samples: number ``K`` of independent samples ``z`` (each with its variants).

    Returns:
        :class:`Estimate` as :class:`LocalReparam`'s: ``value`` the mean loss at the ``K``
        samples, ``per_sample`` ``(K,) + batch_shape``, ``loss_evals`` ``1 + V`` (per sample),
        ``losses`` ``(K,) + batch_shape`` and ``extras`` ``"variant_losses"``
        (``(V, K) + batch_shape``) and ``"num_variants"`` (``V`` per layer, a tuple of ints).

    Shape:
        ``dist``: batch ``B``, event ``E``; ``loss_fn``: ``(1 + V, K) + B + E -> (1 + V, K) + B``;
        ``value``, ``surrogate``: ``B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> target = torch.tensor([1.0, 0.0, 1.0])
        >>> out = lg.LocalExpectation(num_samples=4)(
        ...     lg.Bernoulli(logits=logits), lambda z: ((z - target) ** 2).sum(-1)
        ... )
        >>> out.value.shape, out.loss_evals
        (torch.Size([2]), 4)
        >>> out.surrogate.sum().backward()
        >>> logits.grad  # exact here: the loss is additive over bits
        tensor([[-0.2500,  0.2500, -0.2500],
                [-0.2500,  0.2500, -0.2500]])

    References:
        [1] Titsias & Lázaro-Gredilla, "Local Expectation Gradients for Black Box Variational
            Inference", NeurIPS 2015.
        [2] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
            ICML 2017 (:class:`LocalReparam`).
    """

    def chain(
        self,
        first: Distribution,
        conditionals: Sequence[Conditional],
        loss_fn: ChainLossFn,
    ) -> Estimate:
        """Estimate for a chain of stochastic layers, each unit weighted by its Markov blanket.

        ``z_1 ~ first`` and ``z_{l+1} ~ conditionals[l](z_l)`` are sampled once (``K`` times).
        Layer ``l``'s units are changed one at a time with every other layer at its sampled
        value. ``conditionals[l]`` is called once, on layer ``l + 1``'s rows
        ``[z_{l+1}; variants]`` (``1 + V_{l+1}`` of them): its row 0 samples layer ``l + 2`` and
        the others give ``q(z_{l+2} | variant)`` for the weights. The loss is called once, on
        all ``N = 1 + V_1 + ... + V_L`` rows: row 0 is the base sample, then come layer 1's
        variants, then layer 2's, and so on, every other layer at its base value. Each
        conditional's parameters get the gradient of its layer's units, at the base sample of
        the layer below; ``loss_fn``'s own parameters the pathwise gradient at the base sample.

        Args:
            first: the first layer's distribution, batch shape ``B``.
            conditionals: ``conditionals[l](z)`` maps samples ``z`` of layer ``l + 1`` with
                leading dims ``(1 + V_{l+1}, K) + B`` to the next layer's distribution with
                batch shape ``(1 + V_{l+1}, K) + B`` (or one that broadcasts to it).
            loss_fn: maps ``[z_1, ..., z_L]``, each of shape ``(N, K) + B + E_l``, to losses
                ``(N, K) + B``.

        Returns:
            :class:`Estimate` as for a call; ``loss_evals = N`` and
            ``extras["num_variants"] = (V_1, ..., V_L)``.

        Raises:
            TypeError: ``first`` (or a conditional's output) is not a latentgrad distribution
                with ``has_local_variants`` and ``has_noise``, ``conditionals`` is not a
                sequence of callables or ``loss_fn`` is not callable.
            ValueError: a conditional returns the wrong batch shape, or ``loss_fn`` the wrong
                shape.

        Shape:
            ``value``, ``surrogate``: ``B``; ``per_sample``: ``(K,) + B``.

        Example:
            A sigmoid belief net with two Bernoulli layers (4 and 3 units) and a Bernoulli
            likelihood for 6 binary pixels:

            >>> import torch, torch.nn.functional as F, latentgrad as lg
            >>> _ = torch.manual_seed(0)
            >>> x = torch.rand(8, 6).round()
            >>> enc1, enc2, dec = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 6)
            >>> q1 = lg.Bernoulli(logits=enc1(x))  # batch (8,), event (4,)
            >>> def layer2(z1):  # z1: (1 + 4, K, 8, 4)
            ...     return lg.Bernoulli(logits=enc2(z1))
            >>> def loss_fn(zs):  # zs[l]: (N, K, 8, D_l)
            ...     logits = dec(zs[1])
            ...     nll = F.binary_cross_entropy_with_logits(
            ...         logits, x.expand_as(logits), reduction="none"
            ...     )
            ...     return nll.sum(-1)
            >>> out = lg.LocalExpectation(num_samples=2).chain(q1, [layer2], loss_fn)
            >>> out.loss_evals, out.extras["num_variants"], out.value.shape
            (8, (4, 3), torch.Size([8]))
            >>> out.surrogate.mean().backward()
            >>> all(p.grad is not None for p in (*enc1.parameters(), *enc2.parameters()))
            True
        """
        latent, layers = self._check_chain(first, conditionals, loss_fn)
        out = self._blanket(latent, layers, loss_fn)
        return check_estimate(out, latent.batch_shape, "LocalExpectation.chain")

    def _blanket(
        self,
        first: LatentDistribution,
        conditionals: tuple[Conditional, ...],
        loss_fn: Callable[..., Tensor],
    ) -> Estimate:
        k = self.num_samples
        batch_shape = first.batch_shape
        dist = first
        z = first.sample((k,))
        samples: list[Tensor] = []  # each (K,) + B + E_l
        rows: list[Tensor] = []  # each (1 + V_l, K) + B + E_l: [z_l; variants]
        flip_probs: list[Tensor] = []  # each (V_l, K) + B
        # Layers below the top: log q(row | z_{l-1}) and log q(z_{l+1} | row), each
        # (1 + V_l, K) + B, and the number of units.
        row_log_probs: list[Tensor] = []
        child_log_probs: list[Tensor] = []
        num_units: list[int] = []
        for level in range(len(conditionals) + 1):
            if level > 0:
                name = f"conditionals[{level - 1}]"
                below = rows[-1]
                cond = check_layer(
                    conditionals[level - 1](below), (below.shape[0], k, *batch_shape), name
                )
                require(cond, *self.requires, by="LocalExpectation.chain", name=name)
                dist = cond.batch_row(0)
                z = dist.sample()
                with own_samples():
                    child_log_probs.append(cond.log_prob(z.expand((below.shape[0], *z.shape))))
            variants = dist.local_variants(z)
            z_rows = torch.cat([z.unsqueeze(0), variants.values], 0)
            if level < len(conditionals):  # the top layer needs neither (w_i = q_i there)
                with own_samples():
                    row_log_probs.append(dist.log_prob(z_rows))
                num_units.append(_num_units(dist, variants.probs.shape[0]))
            samples.append(z)
            rows.append(z_rows)
            flip_probs.append(variants.probs)
        num_rows = 1 + sum(p.shape[0] for p in flip_probs)
        losses = evaluate_loss(loss_fn, _stack(samples, rows), (num_rows, k), batch_shape)
        base_loss = losses[0]
        changes = (losses[1:] - base_loss).split([p.shape[0] for p in flip_probs])
        correction = torch.zeros_like(base_loss)
        for level, (probs, change) in enumerate(zip(flip_probs, changes, strict=True)):
            if level == len(conditionals):  # the top layer: w_i = q_i, as in LocalReparam
                term = flip_correction(probs, change)
            else:
                term = blanket_correction(
                    row_log_probs[level],
                    child_log_probs[level],
                    probs,
                    change,
                    base_loss,
                    num_units[level],
                )
            correction = correction + term.to(correction.dtype)
        return local_estimate(base_loss + correction, losses, flip_probs)


def blanket_correction(
    row_log_probs: Tensor,
    child_log_probs: Tensor,
    probs: Tensor,
    change: Tensor,
    base_loss: Tensor,
    units: int,
) -> Tensor:
    """``sum_i sum_c w_i(c) F(z; z_i = c) grad log q(z_i = c | parents)`` as a term of value 0.

    With ``d_c = log q(z_i = c | pa) - log q(z_i = z_i | pa)`` (a difference of row
    log-probabilities) and ``grad log q(z_i = z_i | pa) = -sum_v q_i(v) grad d_v`` over the
    unit's variants ``v``, the term is ``sum_v grad d_v [w_v F_v - q_v sum_c w_c F_c]``. The
    losses enter as ``F_c - F(z)`` (no cancellation between large losses); the weights are
    computed in log space, in at least float32. Values of weight 0 (probability 0, or children
    impossible under them) are skipped, so a NaN/inf loss there does no harm.

    Args:
        row_log_probs: ``log q(row | parents)`` of ``[z; variants]`` (differentiable).
        child_log_probs: ``log q(z_children | row)`` of the same rows.
        probs: ``q_i(c)`` of each variant's changed unit (:class:`LocalVariants` ``probs``).
        change: ``F(variant) - F(z)``.
        base_loss: ``F(z)``.
        units: the number of units; the variants of a unit are consecutive, the same number
            per unit.

    Shape:
        ``row_log_probs``, ``child_log_probs``: ``(1 + V, K) + B``; ``probs``, ``change``:
        ``(V, K) + B``; ``base_loss`` and the result: ``(K,) + B``.
    """
    num_variants = probs.shape[0]
    lead = probs.shape[1:]
    per_unit = (units, num_variants // units, *lead)
    joint = upcast(row_log_probs.detach()) + upcast(child_log_probs.detach())
    scores = torch.cat([joint[0].expand((units, 1, *lead)), joint[1:].reshape(per_unit)], 1)
    weights = torch.softmax(scores, dim=1)[:, 1:]  # w_i(c) of the variants
    delta = upcast(change.detach()).reshape(per_unit)
    delta = torch.where(weights > 0, delta, torch.zeros_like(delta))
    mean_change = (weights * delta).sum(1, keepdim=True)  # sum_c w_i(c) F_c - F(z)
    q = upcast(probs.detach()).reshape(per_unit)
    coef = weights * delta - q * mean_change + (weights - q) * upcast(base_loss.detach())
    coef = coef.reshape((num_variants, *lead))
    diff = row_log_probs[1:] - row_log_probs[0]
    # Impossible variants have d = -inf (and coefficient 0): keep their gradient finite.
    keep = (probs.detach() > 0) & torch.isfinite(diff)
    diff = torch.where(keep, diff, torch.zeros_like(diff))
    return (zero_forward(diff) * coef).sum(0)


def _num_units(dist: LatentDistribution, num_variants: int) -> int:
    """The number of units of ``dist``, checking that they all have as many variants."""
    units = max(math.prod(dist.unit_shape), 1)
    if num_variants % units:
        raise ValueError(
            f"LocalExpectation needs the same number of values in every unit; "
            f"{type(dist).__name__} has {num_variants} variants for {units} units"
        )
    return units


def _stack(samples: list[Tensor], rows: list[Tensor]) -> list[Tensor]:
    """Every layer's loss rows: its base sample, except in its own variants' rows."""
    out = []
    for m, z in enumerate(samples):
        parts = [z.unsqueeze(0)]
        for level, z_rows in enumerate(rows):
            count = z_rows.shape[0] - 1
            parts.append(z_rows[1:] if level == m else z.unsqueeze(0).expand((count, *z.shape)))
        out.append(torch.cat(parts, 0))
    return out


__all__ = ["LocalExpectation"]
