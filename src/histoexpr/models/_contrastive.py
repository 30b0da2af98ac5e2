"""Contrastive self-supervised learning around a tile encoder: SimCLR and MoCo-v2."""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .._core.validate import check_fraction, check_positive
from ._base import Network
from ._encoders import TileEncoder

Method = Literal["simclr", "moco"]
METHODS = get_args(Method)


class ProjectionHead(nn.Sequential):
    """The MLP between encoder features and the contrastive loss (SimCLR, MoCo-v2).

    Parameters
    ----------
    in_features
        Size of the encoder's features.
    hidden_features
        Width of the hidden layer.
    out_features
        Size of the projection the loss compares.

    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__(
            nn.Linear(in_features, hidden_features, bias=False),
            nn.BatchNorm1d(hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, out_features),
        )


class ContrastiveLearner(Network):
    """A tile encoder with a projection head, trained to match two views of the same tile.

    ``forward(view_a, view_b)`` returns the contrastive loss of a batch of view pairs.

    - ``"simclr"`` (Chen et al. 2020): both views go through the encoder and the head; each view
      must pick its partner among the ``2N - 1`` other views of the batch (NT-Xent loss).
    - ``"moco"`` (MoCo-v2, He et al. 2020; Chen et al. 2020): the second view goes through a
      momentum copy of encoder and head (an exponential moving average, not trained by
      gradients); the negatives are the keys of earlier batches kept in a queue, so small
      batches still see many negatives. The key encoder runs with the query encoder's batch-norm
      running statistics (evaluation mode) rather than the batch's own, which stops it from
      telling a batch's keys apart by their shared batch statistics (what MoCo's shuffled batch
      norm prevents on several GPUs).

    The trained encoder is ``learner.encoder`` (a :class:`TileEncoder`).

    Under :class:`~torch.nn.parallel.DistributedDataParallel` (``torchrun``, one share of every
    batch per process), a training learner gathers the other processes' projections
    (:func:`torch.distributed.nn.functional.all_gather`, which passes gradients back to their
    process): SimCLR compares each of its views with all ``2N`` views of the global batch, and
    MoCo enqueues the keys of the global batch. The loss then equals that of one process on
    the whole batch, and so do the gradients; without gathering, each process would see only
    its own share of negatives, and the result would change with the number of processes.
    Batch normalisation still computes its statistics per process (on GPUs, ``hx.tl.pretrain``
    makes it :class:`~torch.nn.SyncBatchNorm`).

    Parameters
    ----------
    encoder
        Configuration of the :class:`TileEncoder` (``TileEncoder.get_config()``).
    method
        ``"simclr"`` or ``"moco"``.
    projection_dim
        Size of the projections compared by the loss.
    hidden_dim
        Width of the projection head's hidden layer; ``None`` uses the encoder's feature size.
    temperature
        Temperature of the softmax over similarities.
    queue_size
        Number of negative keys MoCo keeps (unused by SimCLR).
    momentum
        Momentum of MoCo's key encoder (unused by SimCLR).

    """

    def __init__(
        self,
        *,
        encoder: dict[str, Any],
        method: Method = "simclr",
        projection_dim: int = 64,
        hidden_dim: int | None = None,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Unknown contrastive method {method!r}; choose one of {METHODS}.")
        check_positive("temperature", temperature)
        if method == "moco" and queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}.")
        check_fraction("momentum", momentum, closed="left")
        super().__init__(config={
            "encoder": dict(encoder), "method": method, "projection_dim": projection_dim,
            "hidden_dim": hidden_dim, "temperature": temperature, "queue_size": queue_size,
            "momentum": momentum,
        })
        self.method, self.temperature, self.momentum = method, temperature, momentum
        self.encoder = TileEncoder(**encoder)
        width = self.encoder.out_features if hidden_dim is None else hidden_dim
        self.head = ProjectionHead(self.encoder.out_features, width, projection_dim)
        if method == "moco":
            self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.key_head = copy.deepcopy(self.head).requires_grad_(False)
            keys = F.normalize(torch.randn(queue_size, projection_dim), dim=1)
            self.register_buffer("queue", keys)
            self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        """Return the contrastive loss of the pairs ``(view_a[i], view_b[i])``."""
        if view_a.shape != view_b.shape:
            raise ValueError(f"The two views differ in shape: {tuple(view_a.shape)} and "
                             f"{tuple(view_b.shape)}.")
        if view_a.shape[0] < 2:
            raise ValueError("A contrastive batch needs at least 2 tiles.")
        if self.method == "simclr":
            projections = self.head(self.encoder(torch.cat([view_a, view_b])))
            return nt_xent(projections, self.temperature, gather=self.training)
        return self._moco_loss(view_a, view_b)

    def _moco_loss(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.head(self.encoder(queries)), dim=1)
        with torch.no_grad():
            if self.training:
                self._update_key_encoder()
            self.key_encoder.eval()
            self.key_head.eval()
            k = F.normalize(self.key_head(self.key_encoder(keys)), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ self.queue.clone().T
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        if self.training:
            self._enqueue(_gather_no_grad(k))
        return loss

    @torch.no_grad()
    def _update_key_encoder(self) -> None:
        for query_part, key_part in ((self.encoder, self.key_encoder), (self.head, self.key_head)):
            for q, k in zip(query_part.parameters(), key_part.parameters(), strict=True):
                k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)
            for q, k in zip(query_part.buffers(), key_part.buffers(), strict=True):
                k.copy_(q)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        keys = keys[-size:]
        slots = (self.queue_next + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = keys
        self.queue_next.copy_((self.queue_next + len(keys)) % size)


def nt_xent(projections: torch.Tensor, temperature: float, *, gather: bool = False
            ) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy over ``2N`` projections.

    Rows ``i`` and ``i + N`` are the two views of one tile; every other row is a negative.
    With ``gather`` in a process group of several processes, the rows are this process's share
    of the global batch: each is compared with the views of every process (gathered with their
    gradients), and the loss is the mean over this process's rows; averaged over processes
    (as DDP averages gradients), it is the loss of the global batch on one process.
    """
    z = F.normalize(projections, dim=1)
    n = len(z) // 2
    world = _world_size() if gather else 1
    if world == 1:
        similarity = z @ z.T / temperature
        similarity.fill_diagonal_(float("-inf"))
        partners = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(similarity, partners)
    import warnings

    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private module (torch 2.13)
        warnings.simplefilter("ignore", FutureWarning)
        shares = all_gather(z)  # every process's (2n, d), in rank order; gradients flow back
    if any(len(share) != len(z) for share in shares):
        raise ValueError("Every process must hold the same number of views to gather them.")
    # all first views, then all second views: the layout of one process's global batch
    everyone = torch.cat([share[:n] for share in shares] + [share[n:] for share in shares])
    total = n * world
    start = dist.get_rank() * n
    own = torch.cat([torch.arange(start, start + n), torch.arange(total + start, total + start + n)]
                    ).to(z.device)
    similarity = z @ everyone.T / temperature
    similarity[torch.arange(2 * n, device=z.device), own] = float("-inf")
    partners = torch.cat([own[n:], own[:n]])
    return F.cross_entropy(similarity, partners)


def _world_size() -> int:
    """Processes in the default process group (1 without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def _gather_no_grad(keys: torch.Tensor) -> torch.Tensor:
    """The keys of every process, in rank order (this process's only, without a group)."""
    if _world_size() == 1:
        return keys
    import torch.distributed as dist

    shares = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(shares, keys.contiguous())
    return torch.cat(shares)
