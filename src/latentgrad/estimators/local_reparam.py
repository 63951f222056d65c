"""Local reparameterization with common random numbers (Tokui & Sato)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad._validation import check_int
from latentgrad.distributions import require
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    broadcasts_to,
    check_distribution,
    check_estimate,
    check_loss_fn,
    evaluate_loss,
    zero_forward,
)

Conditional = Callable[[Tensor], Distribution]
"""``conditional(z)``: the next layer's distribution given the samples ``z`` of the layer below."""

ChainLossFn = Callable[[list[Tensor]], Tensor]
"""``loss_fn([z_1, ..., z_L])``: the samples of every layer to losses ``(N, K) + batch_shape``."""


class LocalReparam(Estimator):
    """Local reparameterization: marginalize each unit in turn, keeping all other noise fixed.

    A sample is a deterministic function of noise, ``z = g(u; phi)`` (``z_i = 1[L_i < a_i]`` for a
    bit, Gumbel-max for a categorical unit). For each unit ``i`` and each of its values ``c``
    the loss is evaluated at ``z`` with unit ``i`` set to ``c`` and every other unit, and every
    layer above, computed from the *same* noise (common random numbers). The gradient estimate

        sum_i sum_c grad q_i(c) [F(z; z_i = c) - F(z)] + grad_theta F(z)

    is unbiased and its variance is at most that of the likelihood-ratio estimator with the
    optimal input-dependent baseline [1]. For a bit this is Tokui & Sato's
    ``grad mu_i [F(z; z_i = 1) - F(z; z_i = 0)]``. Subtracting ``F(z)`` changes nothing in
    expectation (``sum_c grad q_i(c) = 0``) but avoids cancellation between large losses.

    The loss is evaluated once on the stacked tensor ``[z; variants]`` of shape
    ``(1 + V, K) + batch_shape + event_shape``, where ``V = sum_i (C_i - 1)`` is the number of
    one-unit changes (``D`` for ``D`` bits, ``K_c - 1`` for a ``K_c``-way categorical) and ``K`` is
    ``num_samples``. Row 0 holds the samples themselves. Variants of probability exactly 0 never
    enter the estimate, so a NaN or infinite loss there does no harm.

    **Several stochastic layers.** :meth:`chain` handles ``z_1 ~ q_1``,
    ``z_{l+1} ~ conditionals[l](z_l)``: a flip in layer ``l`` re-simulates layers ``l+1..L``
    from the same noise. A simpler pattern, when only the first layer needs this estimator, is to
    draw the upper layer's noise outside ``loss_fn`` and turn it into samples inside, so that
    every variant sees the same noise (``from_noise`` broadcasts over the leading dims)::

        u2 = q2_prior.sample_noise((K,))          # (K,) + batch + event, drawn once
        def loss_fn(z1):                          # z1: (1 + V, K) + batch + event
            z2 = lg.Bernoulli(logits=layer2(z1)).from_noise(u2)
            return decoder_loss(z1, z2)

    (``q2_prior`` is any distribution of layer 2's batch and event shape; the noise is standard.)
    Layer 2's own parameters then need another estimator; :meth:`chain` covers both.
    :class:`~latentgrad.estimators.LocalExpectation` (a subclass, the same for one layer) keeps
    the upper layers at their sampled values instead and weights each value by the unit's
    Markov blanket [2].

    The distribution (every layer's, with :meth:`chain`) must declare ``has_local_variants``
    and ``has_noise``.

    Args:
        num_samples: number ``K`` of independent samples ``z`` (each with its variants).

    Returns:
        :class:`Estimate` with ``value`` the mean loss at the ``K`` samples, ``per_sample`` of
        shape ``(K,) + batch_shape``, ``loss_evals`` (``1 + V``, per sample), ``losses``
        (``(K,) + batch_shape``) and ``extras``: ``"variant_losses"``
        (``(V, K) + batch_shape``), ``"num_variants"`` (``V`` per layer, a tuple of ints).

    Shape:
        ``dist``: batch ``B``, event ``E``; ``loss_fn``: ``(1 + V, K) + B + E -> (1 + V, K) + B``;
        ``value``, ``surrogate``: ``B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.local_reparam import LocalReparam
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> target = torch.tensor([1.0, 0.0, 1.0])
        >>> out = LocalReparam(num_samples=4)(
        ...     lg.Bernoulli(logits=logits), lambda z: ((z - target) ** 2).sum(-1)
        ... )
        >>> out.value.shape, out.loss_evals
        (torch.Size([2]), 4)
        >>> out.surrogate.sum().backward()
        >>> logits.grad  # exact here: the loss is additive over bits
        tensor([[-0.2500,  0.2500, -0.2500],
                [-0.2500,  0.2500, -0.2500]])

    References:
        [1] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
            ICML 2017.
        [2] Titsias & Lázaro-Gredilla, "Local Expectation Gradients for Black Box Variational
            Inference", NeurIPS 2015.
    """

    requires = ("has_local_variants", "has_noise")

    def __init__(self, num_samples: int = 1) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        """Estimate for one stochastic layer (``context`` is accepted and unused)."""
        return self._local(dist, (), loss_fn, single=True)

    def chain(
        self,
        first: Distribution,
        conditionals: Sequence[Conditional],
        loss_fn: ChainLossFn,
    ) -> Estimate:
        """Estimate for a chain of stochastic layers, re-simulating upper layers from shared noise.

        ``z_1 ~ first`` and ``z_{l+1} ~ conditionals[l](z_l)``. Noise is drawn once per layer and
        reused for every variant (common random numbers): layer ``l``'s units are changed one at a
        time in the base sample only, and the layers above are recomputed from the same noise
        with ``from_noise``. Each conditional is called once, on all rows so far; the loss once,
        on all ``N = 1 + V_1 + ... + V_L`` rows. Row 0 is the base sample, then come layer 1's
        variants (layers ``2..L`` re-simulated), then layer 2's (layer 1 at its base value), and
        so on. The conditionals' parameters get the local-marginalization gradient of their
        layer's units, evaluated at the base sample of the layers below.

        The noise of every layer must have a law that does not depend on the parameters (true
        of every latentgrad family: Gumbel, logistic and exponential noise are standard).

        Args:
            first: the first layer's distribution, batch shape ``B``.
            conditionals: ``conditionals[l](z)`` maps samples ``z`` of layer ``l + 1`` with
                leading dims ``(N_l, K) + B`` to the next layer's distribution with batch shape
                ``(N_l, K) + B`` (or one that broadcasts to it).
            loss_fn: maps ``[z_1, ..., z_L]``, each of shape ``(N, K) + B + E_l``, to losses
                ``(N, K) + B``.

        Returns:
            :class:`Estimate` as for a call; ``loss_evals = N`` and
            ``extras["num_variants"] = (V_1, ..., V_L)``.

        Shape:
            ``value``, ``surrogate``: ``B``; ``per_sample``: ``(K,) + B``.

        Example:
            A sigmoid belief net with two Bernoulli layers (4 and 3 units) and a Bernoulli
            likelihood for 6 binary pixels:

            >>> import torch, torch.nn.functional as F, latentgrad as lg
            >>> from latentgrad.estimators.local_reparam import LocalReparam
            >>> _ = torch.manual_seed(0)
            >>> x = torch.rand(8, 6).round()
            >>> enc1, enc2, dec = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 6)
            >>> q1 = lg.Bernoulli(logits=enc1(x))  # batch (8,), event (4,)
            >>> def layer2(z1):  # z1: (N_1, K, 8, 4)
            ...     return lg.Bernoulli(logits=enc2(z1))
            >>> def loss_fn(zs):  # zs[l]: (N, K, 8, D_l)
            ...     logits = dec(zs[1])
            ...     nll = F.binary_cross_entropy_with_logits(
            ...         logits, x.expand_as(logits), reduction="none"
            ...     )
            ...     return nll.sum(-1)
            >>> out = LocalReparam(num_samples=2).chain(q1, [layer2], loss_fn)
            >>> out.loss_evals, out.extras["num_variants"], out.value.shape
            (8, (4, 3), torch.Size([8]))
            >>> out.surrogate.mean().backward()
            >>> all(p.grad is not None for p in (*enc1.parameters(), *enc2.parameters()))
            True
        """
        latent, layers = self._check_chain(first, conditionals, loss_fn)
        out = self._local(latent, layers, loss_fn, single=False)
        return check_estimate(out, latent.batch_shape, "LocalReparam.chain")

    def _check_chain(
        self, first: object, conditionals: object, loss_fn: object
    ) -> tuple[LatentDistribution, tuple[Conditional, ...]]:
        """Validate the arguments of :meth:`chain` (errors name the argument)."""
        by = f"{type(self).__name__}.chain"
        latent = check_distribution(first, "first")
        require(latent, *self.requires, by=by, name="first")
        if isinstance(conditionals, (str, bytes)) or not isinstance(conditionals, Sequence):
            raise TypeError(
                f"conditionals must be a sequence of callables, got {type(conditionals).__name__}"
            )
        for i, fn in enumerate(conditionals):
            if not callable(fn):
                raise TypeError(f"conditionals[{i}] must be callable, got {type(fn).__name__}")
        check_loss_fn(loss_fn)
        return latent, tuple(conditionals)

    def _local(
        self,
        first: LatentDistribution,
        conditionals: tuple[Conditional, ...],
        loss_fn: Callable[..., Tensor],
        *,
        single: bool,
    ) -> Estimate:
        k = self.num_samples
        batch_shape = first.batch_shape
        noise = first.sample_noise((k,))
        z_rows = first.from_noise(noise).unsqueeze(0)
        base_dist: LatentDistribution = first
        layers: list[Tensor] = []  # each (N_l, K) + B + E_l, N_l the rows when it was drawn
        flip_probs: list[Tensor] = []  # each (V_l, K) + B
        for level in range(len(conditionals) + 1):
            if level > 0:
                name = f"conditionals[{level - 1}]"
                rows = layers[-1].shape[0]
                dist = check_layer(
                    conditionals[level - 1](layers[-1]), (rows, k, *batch_shape), name
                )
                require(dist, *self.requires, by="LocalReparam.chain", name=name)
                base_dist = dist.batch_row(0)
                # Noise for the base row only, broadcast over every row: common random numbers.
                noise = base_dist.sample_noise()
                z_rows = dist.from_noise(noise)
            variants = base_dist.local_variants(z_rows[0])
            layers.append(torch.cat([z_rows, variants.values], 0))
            flip_probs.append(variants.probs)
        num_rows = layers[-1].shape[0]
        # Layers below a flipped layer stay at their base value in its rows.
        layers = [
            torch.cat([z, z[:1].expand((num_rows - z.shape[0], *z.shape[1:]))], 0)
            if z.shape[0] < num_rows
            else z
            for z in layers
        ]
        losses = evaluate_loss(loss_fn, layers[0] if single else layers, (num_rows, k), batch_shape)
        base_loss = losses[0]
        changes = (losses[1:] - base_loss).split([p.shape[0] for p in flip_probs])
        correction = torch.zeros_like(base_loss)
        for probs, delta in zip(flip_probs, changes, strict=True):
            correction = correction + flip_correction(probs, delta)
        return local_estimate(base_loss + correction, losses, flip_probs)


def local_estimate(per_sample: Tensor, losses: Tensor, flip_probs: Sequence[Tensor]) -> Estimate:
    """The :class:`Estimate` of a local estimator from its per-sample terms.

    ``losses`` are those of all ``N`` rows, row 0 the base samples (the honest value) and the
    others the variants; ``flip_probs`` holds each layer's variant probabilities. ``loss_evals``
    is ``N``; ``extras`` holds ``"variant_losses"`` and ``"num_variants"`` (``V`` per layer).

    Shape:
        ``per_sample``: ``(K,) + B``; ``losses``: ``(N, K) + B``; ``flip_probs[l]``:
        ``(V_l, K) + B``.
    """
    return Estimate.from_terms(
        per_sample,
        losses=losses[0],
        loss_evals=losses.shape[0],
        extras={
            "variant_losses": losses[1:].detach(),
            "num_variants": tuple(p.shape[0] for p in flip_probs),
        },
    )


def flip_correction(probs: Tensor, change: Tensor) -> Tensor:
    """``sum_v grad q_v * change_v`` as a term of value 0 (``change`` detached).

    A variant of probability 0 may have a NaN/inf loss; its gradient weight is 0 anyway, so it is
    skipped.

    Shape:
        ``probs``, ``change``: ``(V, K) + B``; returns ``(K,) + B``.
    """
    change = change.detach()
    change = torch.where(probs.detach() > 0, change, torch.zeros_like(change))
    return (zero_forward(probs) * change).sum(0)


def check_layer(dist: object, batch_shape: tuple[int, ...], name: str) -> LatentDistribution:
    """Check a conditional's output; expand it when its batch shape broadcasts to the rows'."""
    dist = check_distribution(dist, f"the output of {name}")
    expected = torch.Size(batch_shape)
    if dist.batch_shape == expected:
        return dist
    if not broadcasts_to(dist.batch_shape, expected):
        raise ValueError(
            f"{name} must return a distribution with batch shape (rows, num_samples) + "
            f"batch_shape = {tuple(expected)}, got {tuple(dist.batch_shape)} (use .to_event(n) "
            "if trailing dims are units of one latent)"
        )
    return dist.expand(expected)
