"""REBAR and RELAX for categorical and Bernoulli latents: control variates built from the
Concrete relaxation at the sampling noise ``z`` and at a conditional sample ``z~ ~ p(z | b)``,
with parameters trained to minimise the estimator's variance.

For a Gumbel-max family the discrete sample is ``b = H(z)`` of the perturbed logits ``z``
(``argmax`` for a categorical, ``1[z > 0]`` for bits). ``z~`` is drawn from ``p(z | b)`` by a
reparameterization of fresh uniforms, so it is differentiable in the logits. For a control
variate ``c`` the estimate of the gradient w.r.t. the logits ``theta`` is::

    g = (f(b) - c(z~)) grad log p(b) + grad c(z) - grad c(z~)

unbiased for any ``c``: ``E[grad c(z)] = grad E[c(z)]`` and ``E[c(z~) grad log p(b) +
grad c(z~)] = grad E[c(z)]`` as well, since ``z~`` given ``b`` has the law of ``z`` given
``b`` (Tucker et al. 2017, Grathwohl et al. 2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad._numerics import exponential_noise, logistic_noise, upcast
from latentgrad._validation import check_int, check_output_shape, check_positive
from latentgrad.distributions import Bernoulli, Capability, Categorical
from latentgrad.distributions.categorical import one_hot_like
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    latent_family,
    zero_forward,
)


@dataclass
class ConditionalDraw:
    """One draw of :func:`conditional_draw`: the discrete sample and the two relaxation points.

    Attributes:
        values: the discrete samples ``b`` in the family's dtype (one-hot or bits), detached.
        z: the perturbed logits (finite; see ``fixed``), differentiable in the logits.
        z_cond: ``z~ ~ p(z | b)``, reparameterized from fresh uniforms, differentiable.
        log_prob: ``log p(b)`` per logit coordinate's unit, differentiable (a categorical
            puts it on the chosen class, 0 elsewhere; bits have one term each).
        finite: where the logits are finite (other coordinates carry no gradient).
        categorical: whether ``z`` is relaxed with a softmax (else a sigmoid per bit).
    """

    values: Tensor
    z: Tensor
    z_cond: Tensor
    log_prob: Tensor
    finite: Tensor
    categorical: bool

    def relaxed(self, point: Tensor, tau: Tensor) -> Tensor:
        """The Concrete relaxation of ``point`` (``z`` or ``z_cond``) at temperature ``tau``.

        Impossible classes get exactly 0 and deterministic bits exactly their value, with no
        infinity in the graph (so the temperature's gradient stays finite).
        """
        scaled = point / tau
        if self.categorical:
            scaled = torch.where(self.finite, scaled, torch.full_like(scaled, -torch.inf))
            return torch.softmax(scaled, dim=-1)
        return torch.where(self.finite, torch.sigmoid(scaled), self.values.to(scaled.dtype))


def conditional_draw(family: Bernoulli | Categorical, logits: Tensor) -> ConditionalDraw:
    """``b = H(z)`` and ``z~ ~ p(z | b)`` for logits with any leading sample dims.

    * Bits: ``z = a - L`` with logistic ``L`` (the family's own noise convention, ``b = 1[L <
      a]``); given ``b = 0``, ``z~ = log v + log s(a) - log(s(a) + (1 - v) s(-a))`` (``s`` the
      sigmoid, ``v`` uniform), and given ``b = 1`` the mirror image ``z~(a, v) = -z~_0(-a, 1 -
      v)``, all in log space so that logits of ``+-1e4`` stay finite.
    * Categorical: ``z = log pi + G`` with Gumbel ``G``, ``b = argmax z``; with fresh
      exponentials ``E``, ``z~_b = -log E_b`` and ``z~_i = -log(E_i / pi_i + E_b)`` for ``i !=
      b`` (the other Gumbels truncated below ``z~_b``).

    Args:
        family: the :class:`Categorical` or :class:`Bernoulli` whose dtype the values take.
        logits: shape ``(S,) + family.logits.shape``, any float dtype (computed in float32 for
            half precision); ``-inf`` for impossible classes, ``+-inf`` for deterministic bits.

    Returns:
        A :class:`ConditionalDraw`; ``z`` and ``z_cond`` have the shape of ``logits``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.rebar import conditional_draw
        >>> q = lg.Categorical(logits=torch.tensor([[0.0, 1.0, -torch.inf]]))
        >>> draw = conditional_draw(q, q.logits.expand(1000, 1, 3))
        >>> bool((draw.z_cond.argmax(-1) == draw.values.argmax(-1)).all())
        True
    """
    a = upcast(logits)
    finite = torch.isfinite(a.detach())
    if isinstance(family, Categorical):
        return _categorical_draw(family, a, finite)
    return _bernoulli_draw(family, a, finite)


def _bernoulli_draw(family: Bernoulli, a: Tensor, finite: Tensor) -> ConditionalDraw:
    safe = torch.where(finite, a, torch.zeros_like(a))
    z = safe - logistic_noise(a.shape, a)
    on = torch.where(finite, z.detach() > 0, a.detach() > 0)
    log_on, log_off = F.logsigmoid(safe), F.logsigmoid(-safe)
    log_prob = torch.where(finite, torch.where(on, log_on, log_off), torch.zeros_like(a))
    tiny = torch.finfo(a.dtype).tiny
    v = torch.rand(a.shape, dtype=a.dtype, device=a.device).clamp_min_(tiny)
    log_v, log_1mv = torch.log(v), torch.log1p(-v)
    off_cond = log_v + log_on - torch.logaddexp(log_on, log_1mv + log_off)
    on_cond = -(log_1mv + log_off - torch.logaddexp(log_off, log_v + log_on))
    z_cond = torch.where(on, on_cond, off_cond)
    values = on.to(family.logits.dtype)
    return ConditionalDraw(values, z, z_cond, log_prob, finite, categorical=False)


def _categorical_draw(family: Categorical, a: Tensor, finite: Tensor) -> ConditionalDraw:
    logp = torch.log_softmax(a, dim=-1)
    safe = torch.where(finite, logp, torch.zeros_like(logp))
    z = safe - exponential_noise(a.shape, a).log()
    index = torch.where(finite, z.detach(), torch.full_like(z, -torch.inf)).argmax(-1)
    chosen = F.one_hot(index, a.shape[-1]).bool()
    log_e = exponential_noise(a.shape, a).log()
    log_e_top = log_e.gather(-1, index.unsqueeze(-1))
    others = -torch.logaddexp(log_e - safe, log_e_top)
    z_cond = torch.where(chosen, -log_e_top, others)
    log_prob = torch.where(chosen, safe, torch.zeros_like(safe))
    values = one_hot_like(index, a.shape[-1], family.logits)
    return ConditionalDraw(values, z, z_cond, log_prob, finite, categorical=True)


def _log_parameter(value: float, name: str, learn: bool) -> Tensor:
    if not isinstance(learn, bool):
        raise TypeError(f"learn_{name} must be a bool, got {type(learn).__name__}")
    log_value = torch.tensor(math.log(check_positive(value, name)))
    return nn.Parameter(log_value) if learn else log_value


def _real_parameter(value: float, name: str, learn: bool) -> Tensor:
    if not isinstance(learn, bool):
        raise TypeError(f"learn_{name} must be a bool, got {type(learn).__name__}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    tensor = torch.tensor(float(value))
    return nn.Parameter(tensor) if learn else tensor


class _ConditionalRelaxation(Estimator):
    """The machinery REBAR and RELAX share: draws, the gradient, the variance objective.

    Subclasses say whether the loss is evaluated at the relaxed points and build the control
    variate from the relaxed samples (and those losses).
    """

    requires: tuple[Capability, ...] = ("has_logits", "has_relaxation")
    relaxed_losses: bool = True

    def __init__(self, num_samples: int, tau: float, learn_tau: bool) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        log_tau = _log_parameter(tau, "tau", learn_tau)
        if isinstance(log_tau, nn.Parameter):
            self.log_tau = log_tau
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def tau(self) -> float:
        """The current temperature of the relaxation."""
        return float(self.log_tau.detach().exp())

    def _control(self, relaxed: Tensor, f_relaxed: Tensor | None, lead: tuple[int, ...]) -> Tensor:
        """The control variate at stacked relaxed samples ``(2, S) + B + event``."""
        raise NotImplementedError

    def _extras(self) -> dict[str, object]:
        return {"tau": self.tau}

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        family = latent_family(dist, type(self).__name__)
        k = self.num_samples
        batch = dist.batch_shape
        if not torch.is_grad_enabled():
            values = dist.sample((k,))
            losses = evaluate_loss(loss_fn, values, (k,), batch)
            return Estimate.from_terms(losses, losses=losses, loss_evals=k)

        theta = family.logits
        leaf = upcast(theta.detach()).expand(k, *theta.shape).clone().requires_grad_(True)
        params = [p for p in self.parameters() if p.requires_grad]
        draw = conditional_draw(family, leaf)
        # The draw's graph is shared with the relaxed points: keep it.
        (grad_logp,) = torch.autograd.grad(draw.log_prob.sum(), leaf, retain_graph=True)
        tau = self.log_tau.exp().to(leaf.dtype)
        relaxed = torch.stack([draw.relaxed(draw.z, tau), draw.relaxed(draw.z_cond, tau)])
        if self.relaxed_losses:
            points = torch.cat([draw.values, relaxed.flatten(0, 1).to(draw.values.dtype)])
            all_losses = evaluate_loss(loss_fn, points, (3 * k,), batch)
            losses, f_relaxed = all_losses[:k], all_losses[k:].unflatten(0, (2, k))
            evals = 3 * k
        else:
            losses = evaluate_loss(loss_fn, draw.values, (k,), batch)
            f_relaxed, evals = None, k
        control = self._control(relaxed, f_relaxed, (2, k, *batch))
        c_z, c_cond = control[0], control[1]
        (grad_c,) = torch.autograd.grad(
            (c_z - c_cond).sum(),
            leaf,
            create_graph=bool(params),
            retain_graph=True,  # the losses at b share the loss's graph
            allow_unused=True,
        )
        if grad_c is None:
            grad_c = torch.zeros_like(leaf)
        units = leaf.dim() - 1 - len(batch)
        weight = (losses.detach().to(c_cond.dtype) - c_cond).reshape((k, *batch) + (1,) * units)
        g_hat = torch.where(draw.finite, weight * grad_logp + grad_c, torch.zeros_like(leaf))
        unit_dims = tuple(range(1 + len(batch), leaf.dim()))
        critic_loss = g_hat.mean(0).pow(2).sum(tuple(d - 1 for d in unit_dims)).mean()

        finite = torch.isfinite(theta.detach())
        theta_safe = torch.where(finite, upcast(theta), torch.zeros_like(upcast(theta)))
        terms = zero_forward(theta_safe * g_hat.detach()).sum(unit_dims)
        if params and critic_loss.requires_grad:
            # The shared loss graph is kept for the backward of the losses at b.
            grads = torch.autograd.grad(critic_loss, params, allow_unused=True, retain_graph=True)
            # Value 0, gradient exactly d critic_loss / d phi on the control variate's parameters.
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    terms = terms + zero_forward((p * g.detach()).sum()).to(terms.dtype)
        per_sample = losses + terms.to(losses.dtype)
        extras = {"critic_loss": critic_loss.detach(), **self._extras()}
        return Estimate.from_terms(per_sample, losses=losses, loss_evals=evals, extras=extras)


class REBAR(_ConditionalRelaxation):
    """REBAR: the Concrete relaxation's loss as a control variate, with a learned temperature
    and scale, for categorical and Bernoulli latents (and ``to_event`` of them).

    The control variate is ``c(z) = eta f(sigma_tau(z))`` (``sigma_tau`` the Concrete
    relaxation: ``softmax(z / tau)``, or ``sigmoid(z / tau)`` per bit), so the estimate w.r.t.
    the logits is (see :mod:`latentgrad.estimators.rebar`)::

        g = (f(b) - eta f(sigma_tau(z~))) grad log p(b) + eta grad f(sigma_tau(z))
            - eta grad f(sigma_tau(z~))

    unbiased for every ``tau > 0`` and ``eta``. ``log tau`` and ``eta`` are parameters of the
    estimator, trained to minimise the variance through::

        critic_loss = mean_b sum_i (mean_k g_{k,b,i})^2

    whose expectation is the variance plus a term that does not depend on them. One backward
    pass of ``surrogate.mean()`` gives ``mean_k g_k / B`` on the logits and everything upstream,
    the pathwise gradient of ``mean_k f(b_k)`` for parameters inside ``loss_fn`` (nothing from
    the relaxed evaluations), and exactly ``d critic_loss / d (log tau, eta)`` on the
    estimator's parameters: give ``estimator.parameters()`` to an optimizer (the model's is
    fine). ``loss_fn`` must accept relaxed (non-integer) samples and be twice differentiable.

    The loss is evaluated at ``b``, ``sigma_tau(z)`` and ``sigma_tau(z~)`` in one batched call
    (the sample dim holds the ``K`` discrete samples, then the ``K`` relaxed ones at ``z``, then
    those at ``z~``). Under :func:`torch.no_grad` no gradient is estimated: the loss is
    evaluated at ``K`` samples only. Logits of ``+-inf`` give no gradient; half-precision
    logits are computed in float32.

    Args:
        num_samples: samples ``K`` per batch element.
        tau: the initial temperature (Tucker et al.: 0.5).
        eta: the initial scale of the control variate (1).
        learn_tau: train ``log tau`` (else it is a buffer).
        learn_eta: train ``eta`` (else it is a buffer).

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``value`` the mean of the ``K`` losses at
        ``b``, ``loss_evals`` (``3K``), ``losses`` (``(K,) + B``) and ``extras``:
        ``"critic_loss"`` (detached scalar), ``"tau"`` and ``"eta"`` (floats). ``context`` is
        unused.

    Shape:
        ``dist``: batch ``B``; ``loss_fn``: ``(3K,) + B + event -> (3K,) + B``; ``value``,
        ``surrogate``: ``B``; ``per_sample``: ``(K,) + B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.rebar import REBAR
        >>> logits = torch.zeros(8, 3, 4, requires_grad=True)
        >>> est = REBAR()
        >>> opt = torch.optim.Adam([logits, *est.parameters()], lr=1e-2)
        >>> target = torch.tensor([0.0, 1.0, 0.0, 0.0])
        >>> out = est(lg.Categorical(logits=logits).to_event(1), lambda z: ((z - target) ** 2).sum((-1, -2)))
        >>> out.surrogate.mean().backward()
        >>> opt.step()  # the logits, and a step towards a lower-variance (tau, eta)
        >>> out.loss_evals, out.per_sample.shape, logits.grad.shape, est.log_tau.grad.shape
        (3, torch.Size([1, 8]), torch.Size([8, 3, 4]), torch.Size([]))

    References:
        [1] Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, "REBAR: Low-variance, unbiased
            gradient estimates for discrete latent variable models", NeurIPS 2017.
        [2] Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
    """

    def __init__(
        self,
        num_samples: int = 1,
        tau: float = 0.5,
        eta: float = 1.0,
        *,
        learn_tau: bool = True,
        learn_eta: bool = True,
    ) -> None:
        super().__init__(num_samples, tau, learn_tau)
        eta_tensor = _real_parameter(eta, "eta", learn_eta)
        if isinstance(eta_tensor, nn.Parameter):
            self.eta = eta_tensor
        else:
            self.register_buffer("eta", eta_tensor)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, tau={self.tau:.4g}, eta={float(self.eta.detach()):.4g}"

    def _control(self, relaxed: Tensor, f_relaxed: Tensor | None, lead: tuple[int, ...]) -> Tensor:
        assert f_relaxed is not None
        return self.eta.to(f_relaxed.dtype) * f_relaxed

    def _extras(self) -> dict[str, object]:
        return {"tau": self.tau, "eta": float(self.eta.detach())}


class ConcreteRELAX(_ConditionalRelaxation):
    """RELAX with a learned critic on the Concrete relaxation, for categorical and Bernoulli
    latents (and ``to_event`` of them).

    The control variate is ``c(z) = r(sigma_tau(z))``, plus ``eta f(sigma_tau(z))`` (REBAR's)
    when ``loss_term`` is set, as in Grathwohl et al.'s discrete experiments; ``r`` is a
    network on the relaxed sample flattened over the event (``softmax(z / tau)`` or
    ``sigmoid(z / tau)``). The estimate w.r.t. the logits is (see
    :mod:`latentgrad.estimators.rebar`)::

        g = (f(b) - c(z~)) grad log p(b) + grad c(z) - grad c(z~)

    unbiased for any critic, temperature and ``eta``; the critic's parameters, ``log tau`` and
    ``eta`` are trained to minimise the variance through ``critic_loss = mean_b sum_i
    (mean_k g_{k,b,i})^2``, exactly as in :class:`REBAR`: one backward pass of
    ``surrogate.mean()`` gives the logits' estimate, the pathwise gradient of the mean loss at
    ``b`` for parameters inside ``loss_fn``, and ``d critic_loss / d phi`` on the estimator's
    parameters. With :class:`~latentgrad.estimators.relax.MLPCritic` (its output layer starts
    at zero) and no loss term, the untrained estimator is REINFORCE and the critic's bias
    alone is already a learned baseline.

    This is RELAX for the families sampled by one Gumbel-max (or logistic threshold); for the
    families sampled by a recursive algorithm, see :class:`~latentgrad.estimators.relax.RELAX`.

    Args:
        critic: a module mapping relaxed samples ``(*, D)`` to ``(*)`` or ``(*, 1)``, ``D`` the
            number of entries of the event (e.g. ``MLPCritic()``, lazily sized). A submodule.
        num_samples: samples ``K`` per batch element.
        tau: the initial temperature of the relaxation the critic sees.
        loss_term: add ``eta f(sigma_tau(z))`` to the critic (two more loss evaluations per
            sample).
        eta: the initial ``eta`` (with ``loss_term``).
        learn_tau: train ``log tau`` (else it is a buffer).

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``value`` the mean of the ``K`` losses at
        ``b``, ``loss_evals`` (``K``, or ``3K`` with ``loss_term``), ``losses`` and
        ``extras``: ``"critic_loss"``, ``"tau"`` (and ``"eta"`` with ``loss_term``).
        ``context`` is unused.

    Shape:
        ``dist``: batch ``B``; ``loss_fn``: ``(K,) + B + event -> (K,) + B`` (``3K`` with
        ``loss_term``); ``value``, ``surrogate``: ``B``; ``per_sample``: ``(K,) + B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.rebar import ConcreteRELAX
        >>> from latentgrad.estimators.relax import MLPCritic
        >>> logits = torch.zeros(8, 5, requires_grad=True)
        >>> est = ConcreteRELAX(MLPCritic(num_items=5), num_samples=2)
        >>> out = est(lg.Bernoulli(logits=logits), lambda z: (z - 0.5).pow(2).sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.loss_evals, out.per_sample.shape, logits.grad.shape
        (2, torch.Size([2, 8]), torch.Size([8, 5]))

    References:
        [1] Grathwohl, Choi, Wu, Roeder & Duvenaud, "Backpropagation through the void:
            optimizing control variates for black-box gradient estimation", ICLR 2018.
        [2] Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, "REBAR: Low-variance, unbiased
            gradient estimates for discrete latent variable models", NeurIPS 2017.
    """

    def __init__(
        self,
        critic: nn.Module,
        num_samples: int = 1,
        tau: float = 0.5,
        *,
        loss_term: bool = False,
        eta: float = 1.0,
        learn_tau: bool = True,
    ) -> None:
        super().__init__(num_samples, tau, learn_tau)
        if not isinstance(critic, nn.Module):
            raise TypeError(f"critic must be a torch.nn.Module, got {type(critic).__name__}")
        if not isinstance(loss_term, bool):
            raise TypeError(f"loss_term must be a bool, got {type(loss_term).__name__}")
        self.critic = critic
        self.loss_term = loss_term
        self.relaxed_losses = loss_term
        eta_tensor = _real_parameter(eta, "eta", loss_term)
        if isinstance(eta_tensor, nn.Parameter):
            self.eta = eta_tensor
        else:
            self.register_buffer("eta", eta_tensor)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, tau={self.tau:.4g}, loss_term={self.loss_term}"

    def _control(self, relaxed: Tensor, f_relaxed: Tensor | None, lead: tuple[int, ...]) -> Tensor:
        x = relaxed.reshape(*lead, math.prod(relaxed.shape[len(lead) :]))  # B may be empty
        dtype = next((p.dtype for p in self.critic.parameters() if p.is_floating_point()), x.dtype)
        out = check_output_shape(
            self.critic(x.to(dtype)),
            lead,
            "critic",
            f"(*) or (*, 1) for relaxed samples (*, D) (stacked input {tuple(x.shape)})",
        ).to(x.dtype)
        if f_relaxed is not None:
            out = out + self.eta.to(x.dtype) * f_relaxed.to(x.dtype)
        return out

    def _extras(self) -> dict[str, object]:
        extras: dict[str, object] = {"tau": self.tau}
        if self.loss_term:
            extras["eta"] = float(self.eta.detach())
        return extras


__all__ = ["REBAR", "ConcreteRELAX", "ConditionalDraw", "conditional_draw"]
