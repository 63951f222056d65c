"""Building blocks the image experiments share: MLPs, optimizers, binarized batches and eval sets,
and the small rules their training steps and evaluations have in common."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from latentgrad._validation import check_int
from latentgrad.estimators import GumbelSoftmax

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SPLITS = ("train", "valid", "test")

#: Seed of the fixed evaluation subset and of the one-off binarization of non-binary eval splits,
#: the same for every run so that runs are compared on the same examples.
EVAL_DATA_SEED = 1234


class DataSplitsLike(Protocol):
    """What the experiments need from ``latentgrad.data.load_dataset``: ``(N, D)`` splits in [0, 1]."""

    @property
    def train(self) -> Tensor: ...
    @property
    def valid(self) -> Tensor: ...
    @property
    def test(self) -> Tensor: ...
    @property
    def binary(self) -> bool: ...


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them.

    Example:
        >>> mlp([4, 3, 2], "tanh")
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): Tanh()
          (2): Linear(in_features=3, out_features=2, bias=True)
        )
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i > 0:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*layers)


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``"adam"``, ``"sgd"`` (momentum 0.9, as in Jang et al.) or ``"rmsprop"`` (Tokui & Sato).

    Example:
        >>> type(make_optimizer("sgd", nn.Linear(2, 1).parameters(), 0.1)).__name__
        'SGD'
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def has_relaxed_value(estimator: object) -> bool:
    """Whether ``estimator``'s value is a relaxed loss rather than the loss at discrete samples
    (a Gumbel-Softmax that is neither straight-through nor ``honest_value``): then a training
    step reports it as ``relaxed_loss`` and ``loss`` as NaN.

    Example:
        >>> from latentgrad.estimators import GumbelSoftmax
        >>> has_relaxed_value(GumbelSoftmax(honest_value=False)), has_relaxed_value(GumbelSoftmax())
        (True, False)
    """
    return (
        isinstance(estimator, GumbelSoftmax) and not estimator.hard and not estimator.honest_value
    )


def check_split(split: str) -> None:
    """Refuse a split name other than ``"train"``, ``"valid"`` and ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def eval_sample_count(split: str, eval_samples: int, valid_samples: int | None) -> int:
    """Samples for evaluating ``split``: ``valid_samples`` on ``"valid"`` when it is set (a
    cheaper per-epoch validation), else ``eval_samples``.

    Example:
        >>> eval_sample_count("valid", 1000, 100), eval_sample_count("test", 1000, 100)
        (100, 1000)
    """
    if split == "valid" and valid_samples is not None:
        return valid_samples
    return eval_samples


def epoch_steps(num_rows: int, batch_size: int, max_steps: int | None = None) -> int:
    """Batches in a pass over ``num_rows`` rows, at most ``max_steps`` (``None``: no cap).

    Example:
        >>> epoch_steps(250, 100), epoch_steps(250, 100, 2)
        (3, 2)
    """
    steps = math.ceil(num_rows / batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def shuffled_batches(x: Tensor, batch_size: int, max_steps: int | None = None) -> Iterator[Tensor]:
    """Minibatches of the rows of ``x`` in a random order (``torch.randperm``, global RNG, drawn
    when the iteration starts), at most ``max_steps`` of them.

    Example:
        >>> batches = list(shuffled_batches(torch.arange(5), 2))
        >>> len(batches), len(batches[-1]), sorted(torch.cat(batches).tolist()) == list(range(5))
        (3, 1, True)
        >>> len(list(shuffled_batches(torch.arange(5), 2, max_steps=2)))
        2
    """
    order = torch.randperm(x.shape[0])
    for i in range(epoch_steps(x.shape[0], batch_size, max_steps)):
        yield x[order[i * batch_size : (i + 1) * batch_size]]


def eval_subset(
    tensors: Sequence[Tensor], limit: int | None, generator: torch.Generator
) -> list[Tensor]:
    """The same fixed random ``limit`` rows of each of ``tensors`` (``randperm`` from
    ``generator``), or all rows when ``limit`` is ``None`` or not below their number.

    A random subset, not the first rows: the binarized MNIST test rows are sorted by digit
    class.

    Example:
        >>> x, y = eval_subset([torch.arange(10), -torch.arange(10)], 3, torch.Generator())
        >>> len(x), bool((x == -y).all())
        (3, True)
    """
    size = tensors[0].shape[0]
    if limit is None or limit >= size:
        return list(tensors)
    rows = torch.randperm(size, generator=generator)[:limit]
    return [t[rows] for t in tensors]


class BinaryImages:
    """Training batches and fixed evaluation sets of binary images.

    Non-binary splits are binarized dynamically: a fresh Bernoulli draw per training batch
    (torch's global RNG), one fixed draw (seed :data:`EVAL_DATA_SEED`) for evaluation.

    Args:
        data: splits of shape ``(N, D)`` with values in [0, 1].
        batch_size: training batch size.
        max_steps_per_epoch: cap on the batches of an epoch (``None``: the whole split).
        max_eval_examples: cap on the evaluated examples, a fixed random subset (``None``: all).

    Example:
        >>> from latentgrad.data import load_dataset
        >>> images = BinaryImages(load_dataset("digits"), 100, 3, 50)
        >>> batches = list(images.train_batches())
        >>> len(batches), tuple(batches[0].shape)
        (3, (100, 64))
        >>> images.eval_data("test").shape
        torch.Size([50, 64])
    """

    def __init__(
        self,
        data: DataSplitsLike,
        batch_size: int,
        max_steps_per_epoch: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.max_steps_per_epoch = max_steps_per_epoch
        self.max_eval_examples = max_eval_examples
        self._eval_cache: dict[str, Tensor] = {}

    @property
    def dim(self) -> int:
        """Pixels ``D`` per image."""
        return int(self.data.train.shape[-1])

    def binarize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` itself for binary data, else a Bernoulli draw of it."""
        if self.data.binary:
            return x
        from latentgrad.data import dynamic_binarize

        return dynamic_binarize(x, generator=generator)

    def train_batches(self) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split (:func:`shuffled_batches`), not yet
        binarized (call :meth:`binarize` on each)."""
        return shuffled_batches(self.data.train, self.batch_size, self.max_steps_per_epoch)

    def eval_data(self, split: str) -> Tensor:
        """The fixed, binarized evaluation examples of ``split``, at most ``max_eval_examples``
        (:func:`eval_subset`; the binarization draws from the same generator next)."""
        check_split(split)
        if split not in self._eval_cache:
            generator = torch.Generator().manual_seed(EVAL_DATA_SEED)
            (x,) = eval_subset([getattr(self.data, split)], self.max_eval_examples, generator)
            self._eval_cache[split] = self.binarize(x, generator)
        return self._eval_cache[split]


def chunk_sizes(num_samples: int, chunk: int) -> tuple[int, int]:
    """``(examples, samples)`` per pass so that ``examples * samples <= chunk`` (at least 1 each).

    Example:
        >>> chunk_sizes(1000, 4096), chunk_sizes(10, 4096)
        ((4, 1000), (409, 10))
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    examples = max(1, chunk // num_samples)
    samples = min(num_samples, max(1, chunk // examples))
    return examples, samples


#: Rows of logits that :func:`linear_logsumexp` holds at once: 1024 x 256 float32 logits are 1 MB,
#: so a chunk's logits stay in cache between the matrix product, the exponential and the sums.
LSE_CHUNK = 1024


def _exp_below_max(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(exp(logits - top), top)`` with ``top`` the rows' maxima (0 where a row's is not
    finite), in place of ``logits`` ``(R, L)``; ``top`` is ``(R, 1)``."""
    top = logits.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return logits.sub_(top).exp_(), top


class LinearLogSumExp(torch.autograd.Function):
    """``lse[r] = logsumexp_l (h[r] . weight[l] + bias[l])`` without the ``(R, L)`` logits in
    memory: the forward keeps ``lse`` only, and the backward recomputes the logits a chunk of
    rows at a time (see :func:`linear_logsumexp`)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: Tensor,
        weight: Tensor,
        bias: Tensor,
        chunk: int,
    ) -> Tensor:
        out = h.new_empty(h.shape[0])
        weight_t = weight.t().contiguous()  # (F, L)
        for start in range(0, h.shape[0], chunk):
            e, top = _exp_below_max(torch.addmm(bias, h[start : start + chunk], weight_t))
            out[start : start + chunk] = e.sum(1).log_() + top.squeeze(1)
        ctx.save_for_backward(h, weight, bias, out)
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        h, weight, bias, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        chunk: int = ctx.chunk  # type: ignore[attr-defined]
        need_h, need_w, need_b, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_h = torch.empty_like(h) if need_h else None
        # The products are taken with the chunk's long dimension inside (F x L times L x rows,
        # F x rows times rows x L): with F a handful of features that is several times faster
        # than rows x L times L x F.
        weight_t = weight.t().contiguous()  # (F, L)
        grad_wt = torch.zeros_like(weight_t) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for start in range(0, h.shape[0], chunk):
            rows = slice(start, start + chunk)
            hc = h[rows]
            # grad * softmax: the gradient of lse with respect to the chunk's logits.
            s = torch.addmm(bias, hc, weight_t).sub_(lse[rows].unsqueeze(1)).exp_()
            s.mul_(grad[rows].unsqueeze(1))
            if grad_h is not None:
                grad_h[rows] = torch.mm(weight_t, s.t()).t()
            if grad_wt is not None:
                grad_wt.addmm_(hc.t(), s)
            if grad_b is not None:
                grad_b.add_(s.sum(0))
        grad_w = grad_wt.t().contiguous() if grad_wt is not None else None
        return grad_h, grad_w, grad_b, None


class SummedLinearLogSumExp(torch.autograd.Function):
    """``out[u] = sum_p logsumexp_l (h[u, p] . weight[l] + bias[l])`` (see
    :func:`summed_linear_logsumexp`).

    The gradient of ``out[u]`` is known in the forward up to the factor ``grad[u]``: with the
    softmax ``s[u, p]`` of the logits, ``d out[u] / d h[u, p] = s[u, p] @ weight``,
    ``d out[u] / d weight = sum_p s[u, p]^T h[u, p]`` (``L x F``) and ``d out[u] / d bias =
    sum_p s[u, p]``. The forward keeps these (``P F + L F + L`` numbers per ``u``, not the
    ``P L`` logits), so the backward only scales and sums them: no second pass over the logits.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: Tensor,
        weight: Tensor,
        bias: Tensor,
        chunk: int,
    ) -> Tensor:
        u, p, f = h.shape
        levels = weight.shape[0]
        out = h.new_empty(u)
        weight_t = weight.t().contiguous()  # (F, L)
        d_h = torch.empty_like(h)
        d_wb = h.new_empty(u, f + 1, levels)  # d weight^T and, last, d bias
        step = max(1, chunk // max(p, 1))  # groups per block
        for start in range(0, u, step):
            groups = slice(start, start + step)
            hc = h[groups].reshape(-1, f)
            g = hc.shape[0] // p
            # the softmax times its row's total, (g P, L)
            e, top = _exp_below_max(torch.addmm(bias, hc, weight_t))
            total = e.sum(1, keepdim=True)
            out[groups] = (total.log() + top).view(g, p).sum(1)
            # The products divide by the totals through their small factors, never through e.
            # (F x L times L x rows: the long dimension inside, see LinearLogSumExp.backward.)
            inv = total.reciprocal_()
            d_h[groups] = torch.mm(weight_t, e.t()).t().mul_(inv).view(g, p, f)
            rows = torch.cat([hc, torch.ones_like(hc[:, :1])], 1).mul_(inv)
            d_wb[groups] = torch.bmm(rows.view(g, p, f + 1).transpose(1, 2), e.view(g, p, levels))
        ctx.save_for_backward(d_h, d_wb)
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        d_h, d_wb = ctx.saved_tensors  # type: ignore[attr-defined]
        need_h, need_w, need_b, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
        u, f1, levels = d_wb.shape
        grad_h = d_h * grad.view(u, 1, 1) if need_h else None
        grad_w = grad_b = None
        if need_w or need_b:
            grad_wb = (grad @ d_wb.view(u, f1 * levels)).view(f1, levels)
            grad_w = grad_wb[:-1].t() if need_w else None
            grad_b = grad_wb[-1] if need_b else None
        return grad_h, grad_w, grad_b, None


def summed_linear_logsumexp(
    h: Tensor, weight: Tensor, bias: Tensor | None = None, chunk: int = LSE_CHUNK
) -> Tensor:
    """``linear_logsumexp(h, weight, bias).sum(-1)``: the log-partitions of a linear output
    layer summed over the rows of each group, ``h`` ``(..., P, F)`` to ``(...)`` (a categorical
    likelihood per pixel, ``P`` pixels per image). The same values and gradients, faster when
    the features are few (``F < P``): the forward keeps each group's gradient, up to its
    upstream factor, instead of the backward recomputing the logits
    (:class:`SummedLinearLogSumExp`; about 1.3 times faster forward and backward for 784
    pixels, 5 features and 256 levels). Without a gradient to take (``torch.no_grad()``, or no
    input that requires one), or with ``F >= P``, it is :func:`linear_logsumexp` summed.

    Args:
        h: features ``(..., P, F)``.
        weight: ``(L, F)``, as in ``nn.Linear(F, L)``.
        bias: ``(L,)`` or ``None``.
        chunk: rows of logits per block (whole groups, at least one).

    Returns:
        ``(...)``, differentiable in ``h``, ``weight`` and ``bias``.

    Example:
        >>> h, layer = torch.randn(3, 4, 2), nn.Linear(2, 7)
        >>> out = summed_linear_logsumexp(h, layer.weight, layer.bias)
        >>> torch.allclose(out, layer(h).logsumexp(-1).sum(-1), atol=1e-5)
        True
    """
    if h.dim() < 2:
        raise ValueError(f"h must have shape (..., P, F), got {tuple(h.shape)}")
    wanted = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h, weight, bias)
    )
    if not wanted or h.shape[-1] >= h.shape[-2]:
        return linear_logsumexp(h, weight, bias, chunk).sum(-1)
    check_int(chunk, "chunk", minimum=1)
    bias = _checked_bias(h, weight, bias)
    flat = h.reshape(-1, *h.shape[-2:])
    out: Tensor = SummedLinearLogSumExp.apply(flat, weight, bias, chunk)
    return out.view(h.shape[:-2])


def linear_logsumexp(
    h: Tensor, weight: Tensor, bias: Tensor | None = None, chunk: int = LSE_CHUNK
) -> Tensor:
    """The log-partition ``logsumexp(h @ weight.T + bias, -1)`` of a linear output layer,
    computed ``chunk`` rows at a time: the ``(..., L)`` logits are never all in memory, in the
    forward or the backward (which recomputes them), so a categorical likelihood with many
    classes per row (256 grey levels per pixel) costs a few passes over cache-sized blocks
    instead of several over a tensor of ``rows x L``.

    Together with the logit of the observed class, ``h[r] . weight[x_r] + bias[x_r]`` (cheap),
    it gives the cross-entropy ``lse - logit``.

    Args:
        h: features ``(..., F)``.
        weight: ``(L, F)``, as in ``nn.Linear(F, L)``.
        bias: ``(L,)`` or ``None``.
        chunk: rows per block (at least 1).

    Returns:
        ``(...)``, differentiable in ``h``, ``weight`` and ``bias``.

    Example:
        >>> h, layer = torch.randn(3, 4, 5), nn.Linear(5, 7)
        >>> out = linear_logsumexp(h, layer.weight, layer.bias, chunk=5)
        >>> torch.allclose(out, layer(h).logsumexp(-1), atol=1e-6)
        True
    """
    check_int(chunk, "chunk", minimum=1)
    bias = _checked_bias(h, weight, bias)
    flat = h.reshape(-1, h.shape[-1])
    out: Tensor = LinearLogSumExp.apply(flat, weight, bias, chunk)
    return out.view(h.shape[:-1])


def _checked_bias(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``bias`` (zeros for ``None``) after checking the shapes of ``weight`` and ``bias``."""
    if weight.dim() != 2 or h.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must have shape (L, F) with F = h.shape[-1] = {h.shape[-1]}, got "
            f"{tuple(weight.shape)}"
        )
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return bias
