"""The token cache format in halluscope.data: one-shot writing, reading, damage detection."""

import json
import math

import numpy as np
import pytest
import torch

from halluscope.data.token_cache import TokenCache, write_token_cache
from halluscope.errors import UserError


def test_written_cache_reads_back(tmp_path):
    tokens = torch.randint(0, 300, (5, 2, 3))
    write_token_cache(tmp_path / "c", tokens, vocab_size=300, sources=list("abcde"), tokenizer="tok")
    cache = TokenCache(tmp_path / "c")
    assert len(cache) == 5 and cache.grid == (2, 3) and cache.seq_len == 6 and cache.tokenizer == "tok"
    assert torch.equal(cache[4], tokens[4]) and torch.equal(cache[-1], tokens[4])
    assert np.array_equal(cache.sequences(), tokens.view(5, 6).numpy())
    assert cache.sources == list("abcde")
    with pytest.raises(IndexError):
        cache[5]


def test_unigram_entropy_known_answer(tmp_path):
    tokens = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [1, 1]]])  # half zeros, half ones
    write_token_cache(tmp_path / "c", tokens, vocab_size=4, sources=["a", "b"])
    assert TokenCache(tmp_path / "c").unigram_entropy() == pytest.approx(math.log(2))


def test_damaged_caches_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        TokenCache(tmp_path / "missing")
    write_token_cache(tmp_path / "c", torch.zeros(4, 2, 2, dtype=torch.long), vocab_size=8, sources=list("abcd"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    shard = tmp_path / "c" / manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-5])  # truncated shard
    with pytest.raises(UserError, match="damaged"):
        TokenCache(tmp_path / "c")
    del manifest["grid"]
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="malformed"):
        TokenCache(tmp_path / "c")
    manifest["grid"], manifest["complete"] = [2, 2], False
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="unfinished"):
        TokenCache(tmp_path / "c")
