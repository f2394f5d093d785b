"""A reference minGPT written from the documented layout (separate key / query / value layers,
a causal mask buffer, masked softmax): what the minGPT, net2net and TATS importers are checked
against, with random weights saved under its own key names."""

import math

import torch
import torch.nn as nn


class RefAttention(nn.Module):
    def __init__(self, width, heads, block):
        super().__init__()
        self.key, self.query, self.value, self.proj = (nn.Linear(width, width) for _ in range(4))
        self.register_buffer("mask", torch.tril(torch.ones(block, block)).view(1, 1, block, block))
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (layer(x).view(b, t, self.heads, -1).transpose(1, 2) for layer in (self.query, self.key, self.value))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))


class RefBlock(nn.Module):
    def __init__(self, width, heads, block):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = RefAttention(width, heads, block)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RefGPT(nn.Module):
    """minGPT; TATS's: vocabulary = classes + codes, block_size = the grid's size."""

    def __init__(self, vocab, block, layers=2, heads=2, width=32):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Parameter(torch.randn(1, block, width) * 0.1)
        self.blocks = nn.Sequential(*(RefBlock(width, heads, block) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        for p in self.parameters():  # away from the defaults, so a mixed-up tensor shows
            if p.dim() == 1:
                nn.init.normal_(p, std=0.1)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb[:, :idx.shape[1]]
        return self.head(self.ln_f(self.blocks(x)))
