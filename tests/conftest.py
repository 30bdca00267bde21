"""Shared test helpers: tiny model sizes that run in seconds on two CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, decoder_hidden_size=48, decoder_num_layers=1,
            decoder_num_heads=4, head_out_dim=32, head_hidden_dim=64, head_bottleneck_dim=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
