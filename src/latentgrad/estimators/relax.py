"""RELAX for structured families: a learned critic on the exponential noise, with the
conditional reparameterization of the noise given the execution trace."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from latentgrad._numerics import exponential_noise, upcast
from latentgrad._validation import check_int, check_output_shape
from latentgrad.distributions import StructuredDistribution
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    zero_forward,
)


class MLPCritic(nn.Module):
    """A small default critic for :class:`RELAX`: an MLP with two ``tanh`` hidden layers.

    ``c(n) = w3 . tanh(W2 tanh(W1 n + b1) + b2) + b3`` on the log-noise ``n`` of the ``D``
    items. The output layer starts at zero, so an untrained critic is ``c = 0`` and RELAX
    starts out as T-REINFORCE; its bias alone already acts as a learned constant baseline.

    Args:
        num_items: ``D``, the number of noise coordinates of the family
            (``dist.num_items``); ``None``: taken from the first input (a lazy first layer).
        hidden: width of both hidden layers.

    Shape:
        input ``(*, D)``, output ``(*)``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.relax import MLPCritic
        >>> critic = MLPCritic(num_items=4)
        >>> critic(torch.randn(3, 2, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, num_items: int | None = None, hidden: int = 32) -> None:
        super().__init__()
        self.num_items = None if num_items is None else check_int(num_items, "num_items", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        first: nn.Module = (
            nn.LazyLinear(self.hidden)
            if self.num_items is None
            else nn.Linear(self.num_items, self.hidden)
        )
        self.net = nn.Sequential(
            first,
            nn.Tanh(),
            nn.Linear(self.hidden, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, 1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, hidden={self.hidden}"

    def forward(self, noise: Tensor) -> Tensor:
        if noise.dim() < 1 or (self.num_items is not None and noise.shape[-1] != self.num_items):
            raise ValueError(
                f"noise must have shape (*, num_items={self.num_items}), got {tuple(noise.shape)}"
            )
        out: Tensor = self.net(noise)
        return out.squeeze(-1)


class RELAX(Estimator):
    """RELAX with a learned critic for families sampled by a recursive algorithm.

    For a sample ``X`` drawn from log-noise ``n = log E`` (see
    :mod:`latentgrad.structured`), its execution trace ``T`` and conditional noise
    ``Ẽ ~ p(E | T)`` built by the family's ``conditional_noise`` from standard
    exponentials shared across each step (a reparameterization: differentiable in ``theta``),
    the gradient estimate w.r.t. the item scores ``theta`` is::

        ĝ = (f(X) - c(Ẽ)) grad log p(T) + grad c(E) - grad c(Ẽ)

    where ``E`` is reparameterized too (``log E = log Exp(1) - theta``), ``c`` is the critic
    and the weight ``f(X) - c(Ẽ)`` is held constant in ``theta``. It is unbiased for any
    critic (the second and third terms correct the control variate ``c(Ẽ)`` exactly, since
    ``Ẽ`` given ``T`` has the law of ``E`` given ``T``); with ``c = 0`` it is T-REINFORCE. The
    critic is trained to minimise the variance of ``ĝ``, through the loss (``B`` the batch
    elements, ``i`` the items)::

        critic_loss = mean_b sum_i (mean_k ĝ_{k,b,i})^2

    whose expectation is the variance plus a term that does not depend on the critic.

    One backward pass of ``surrogate.mean()`` gives: ``mean_k ĝ_k / B`` on the
    distribution's parameters and everything upstream of them (``surrogate.sum()`` gives
    ``mean_k ĝ_k`` itself), the pathwise gradient of ``mean_k f(X_k)`` for parameters
    inside ``loss_fn``, and exactly ``d critic_loss / d phi`` on the critic parameters
    ``phi`` (``B`` times it with ``surrogate.sum()``), and nothing else: the critic loss sends
    no gradient upstream of the scores. Give ``estimator.parameters()`` (the critic) to an
    optimizer of its own or to the model's.

    The critic sees the log-noise with absent items (score ``-inf``, log-noise ``+inf``)
    replaced by 0, in the dtype of its first floating-point parameter. Under
    :func:`torch.no_grad` or when the scores do not require grad, no gradient is estimated:
    the critic is not evaluated, ``value`` and ``losses`` are returned and no graph is kept.

    The distribution must declare ``has_trace`` and ``has_conditional_noise`` (the families
    sampled by a recursive algorithm, e.g. ``KSubset``; not ``to_event`` of them).

    Args:
        critic: a module mapping log-noise ``(*, D)`` to ``(*)`` (or ``(*, 1)``), e.g.
            :class:`MLPCritic`; ``D = dist.num_items``. It becomes a submodule, so it is in
            ``state_dict`` and ``parameters()``.
        num_samples: number of samples ``K`` per batch element.

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``value`` the mean of the ``K``
        losses, ``loss_evals`` (``K``), ``losses`` (detached) and ``extras``:
        ``"critic_loss"`` (detached scalar) and ``"critic"`` (``c(Ẽ)`` of each sample,
        detached) when a gradient is estimated. ``context`` is accepted for the estimator
        contract and unused.

    Shape:
        ``dist``: batch ``B``, event ``V``, ``D`` items; ``loss_fn``: ``(K,) + B + V ->
        (K,) + B``; ``value``, ``surrogate``: ``B``; ``per_sample``, ``"critic"``:
        ``(K,) + B``.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.ksubset import KSubset
        >>> from latentgrad.estimators.relax import RELAX, MLPCritic
        >>> scores = torch.zeros(8, 5, requires_grad=True)
        >>> est = RELAX(MLPCritic(num_items=5), num_samples=2)
        >>> opt = torch.optim.Adam(est.parameters(), lr=1e-2)
        >>> out = est(KSubset(scores, k=2), lambda z: (z * torch.arange(5.0)).sum(-1))
        >>> out.surrogate.mean().backward()  # the scores' gradient and the critic's
        >>> opt.step()  # a step towards a lower-variance critic
        >>> scores.grad.shape, out.per_sample.shape, out.extras["critic_loss"].shape
        (torch.Size([8, 5]), torch.Size([2, 8]), torch.Size([]))

    References:
        [1] Grathwohl, Choi, Wu, Roeder & Duvenaud, "Backpropagation through the void:
            optimizing control variates for black-box gradient estimation", ICLR 2018.
        [2] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    requires = ("has_trace", "has_conditional_noise")

    def __init__(self, critic: nn.Module, num_samples: int = 1) -> None:
        super().__init__()
        if not isinstance(critic, nn.Module):
            raise TypeError(f"critic must be a torch.nn.Module, got {type(critic).__name__}")
        self.critic = critic
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _draw(
        self, dist: StructuredDistribution, k: int
    ) -> tuple[Tensor, Tensor, Any, Tensor, Tensor]:
        """``k`` samples: ``(value, log-noise, trace, step_noise, item_noise)``.

        ``step_noise`` (``(k,) + B + (T,)``) and ``item_noise`` (``(k,) + B + (D,)``) are the
        standard exponentials of the conditional reparameterization.
        """
        value, noise, trace = dist.sample_with_trace((k,))
        step_noise = exponential_noise(trace.choices.shape, noise)
        item_noise = exponential_noise(noise.shape, noise)
        return value, noise, trace, step_noise, item_noise

    def _critic_values(self, noise: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(c(E), c(Ẽ))`` from log-noise with absent items already 0, in one critic call."""
        x = torch.stack([noise, cond])
        dtype = next((p.dtype for p in self.critic.parameters() if p.is_floating_point()), x.dtype)
        out = check_output_shape(
            self.critic(x.to(dtype)),
            tuple(x.shape[:-1]),
            "critic",
            f"(*) or (*, 1) for log-noise (*, D) (stacked input {tuple(x.shape)})",
        )
        out = out.to(x.dtype)
        return out[0], out[1]

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        family: StructuredDistribution = dist  # type: ignore[assignment]  # has_conditional_noise
        k = self.num_samples
        value, noise, trace, step_noise, item_noise = self._draw(family, k)
        losses = evaluate_loss(loss_fn, value, (k,), dist.batch_shape)
        theta = upcast(family.item_scores())
        if not (torch.is_grad_enabled() and theta.requires_grad):
            return Estimate.from_terms(losses, losses=losses, loss_evals=k)

        present = torch.isfinite(theta.detach())
        g_hat, critic_loss, cond_values = self._gradient(
            family, theta.detach(), present, losses.detach(), noise, trace, step_noise, item_noise
        )
        # Inject ĝ into the scores; absent items are replaced by 0 before multiplying.
        theta_finite = torch.where(present, theta, torch.zeros_like(theta))
        terms = zero_forward((theta_finite * g_hat.detach()).sum(-1))
        params = [p for p in self.critic.parameters() if p.requires_grad]
        if params and critic_loss.requires_grad:
            grads = torch.autograd.grad(critic_loss, params, allow_unused=True)
            # Value 0, gradient exactly d critic_loss / d phi on the critic, nothing elsewhere.
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    terms = terms + zero_forward((p * g.detach()).sum()).to(terms.dtype)
        per_sample = losses + terms.to(losses.dtype)
        extras = {"critic_loss": critic_loss.detach(), "critic": cond_values.detach()}
        return Estimate.from_terms(per_sample, losses=losses, loss_evals=k, extras=extras)

    def _gradient(
        self,
        family: StructuredDistribution,
        theta: Tensor,
        present: Tensor,
        losses: Tensor,
        noise: Tensor,
        trace: Any,
        step_noise: Tensor,
        item_noise: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``ĝ`` per sample (``(K,) + B + (D,)``), the critic loss and ``c(Ẽ)`` (``(K,) + B``).

        ``ĝ`` and the critic loss keep their graph to the critic parameters.
        """
        k = noise.shape[0]
        # One leaf copy of theta per sample, so that one autograd.grad of a sum over samples
        # and batch elements gives the gradient of each (sample, element) separately.
        leaf = theta.unsqueeze(0).expand(k, *theta.shape).clone().requires_grad_(True)
        mask = present.expand_as(leaf)
        zero = torch.zeros_like(leaf)
        with torch.enable_grad():
            logp = family.trace_log_prob(trace, item_scores=leaf)
            (grad_logp,) = torch.autograd.grad(logp.sum(), leaf)
            safe = torch.where(mask, leaf, zero)
            # log E = log Exp(1) - theta: same value as the sampled noise, gradient -1.
            noise_rep = torch.where(mask, noise.detach() + (safe.detach() - safe), zero)
            cond = family.conditional_noise(trace, step_noise, item_noise, item_scores=leaf)
            cond = torch.where(mask, cond, zero)
            c_noise, c_cond = self._critic_values(noise_rep, cond)
            diff = (c_noise - c_cond).sum()
            has_params = any(p.requires_grad for p in self.critic.parameters())
            grad_c = None
            if diff.requires_grad:
                (grad_c,) = torch.autograd.grad(
                    diff, leaf, create_graph=has_params, allow_unused=True
                )
            if grad_c is None:
                grad_c = zero
            weight = (losses.to(c_cond.dtype) - c_cond).unsqueeze(-1)
            g_hat = torch.where(mask, weight * grad_logp + grad_c, zero)
            critic_loss = g_hat.mean(0).pow(2).sum(-1).mean()
        return g_hat, critic_loss, c_cond
