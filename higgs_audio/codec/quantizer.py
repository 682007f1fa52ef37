"""Residual vector quantiser: each layer projects the residual to a small space and picks its nearest code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Buffer(torch.zeros(size, dim))


class _Layer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook = _Codebook(codebook_size, codebook_dim)
        self.project_in = nn.Linear(dim, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim)

    def encode(self, residual: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T) indices of the nearest code by Euclidean distance."""
        z = self.project_in(residual).float()
        embed = self.codebook.embed.float().t()
        flat = z.reshape(-1, z.shape[-1])
        # Same expression (and so the same rounding near ties) as the official tokenizer.
        dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.argmax(dim=-1).view(z.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, dim)."""
        return self.project_out(F.embedding(codes, self.codebook.embed))


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, num_codebooks: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(_Layer(dim, codebook_size, codebook_dim) for _ in range(num_codebooks))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> codes (B, num_codebooks, T)."""
        residual, codes = x, []
        for layer in self.quantizers:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, num_codebooks, T) -> (B, T, dim), the sum of every layer's code vector."""
        out = self.quantizers[0].decode(codes[:, 0])
        for i in range(1, len(self.quantizers)):
            out = out + self.quantizers[i].decode(codes[:, i])
        return out
