"""Quantised downlinks: what the server sends (strategies.downlink) and what a node rebuilds
from it (simulations.client_sync), against the fp32 path and an error bound per block."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.holding import Holding
from fedfish.masks import Mask
from fedfish.quantize import INT8_BLOCK, INT8_MAX, int8_body_size
from fedfish.sync import ChangeHistory
from fedfish.value_section import value_section_size
from simulations.client_sync import NeedBase, sync_model
from simulations.config import ConfigError, RunConfig
from strategies.downlink import DownlinkEncoder
from tests.loopback import run_strategy

P = 600


def _moved(seed: int, mask: Mask, scale: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """A version-0 model and a global model that moved away from it under ``mask``."""
    gen = torch.Generator().manual_seed(seed)
    version0 = torch.randn(P, generator=gen)
    current = version0.clone()
    current[mask.bits] += scale * torch.randn(mask.k, generator=gen)
    return version0, current


def _node_cfg(node_sync_config: dict, **extra: object) -> dict:
    return {"public-base-digest": "", **node_sync_config, **extra}


def _block_bound(change: torch.Tensor) -> torch.Tensor:
    """The largest int8 rounding error each value may carry: one step of its block's scale."""
    padded = torch.zeros(-(-change.numel() // INT8_BLOCK) * INT8_BLOCK)
    padded[: change.numel()] = change.abs()
    steps = padded.view(-1, INT8_BLOCK).amax(dim=1) / INT8_MAX
    return steps.repeat_interleave(INT8_BLOCK)[: change.numel()]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.01, 0.5), dtype=st.sampled_from(["int8", "fp16", "bf16"]))
def test_a_node_rebuilds_the_global_model_within_one_rounding_step(seed: int, density: float, dtype: str) -> None:
    # Prepare: a node that holds version 0 and is sent the values under the round's mask
    mask = Mask(bits=torch.rand(P, generator=torch.Generator().manual_seed(seed)) < density, version=1)
    if mask.k == 0:
        return
    version0, current = _moved(seed, mask)
    history = ChangeHistory(P)
    history.record(mask.bits)
    encoder = DownlinkEncoder(P, dtype, version0, seed=seed)

    server_model = current.clone()

    # Execute
    sync = encoder.node_sync(history, current, 0, 1, mask, None)
    received = sync_model(_node_cfg(sync.config), sync.payloads, Holding(), version0, mask)

    # Assert: k values in the wire dtype, a node within a rounding step of the global model,
    # exact off the mask (version 0 there), and the server's model untouched
    assert sync.config["sync"] == "delta-mask" and sync.config["values-from"] == "version0"
    assert len(sync.payloads["model-values"]) == codec.HEADER_SIZE + value_section_size(mask.k, dtype)
    change = current[mask.bits] - version0[mask.bits]
    if dtype == "int8":
        bound = _block_bound(change) * 1.0001
    else:
        bound = change.abs() * 2.0 ** (-8 if dtype == "bf16" else -11) + 1e-7
    assert ((received[mask.bits] - current[mask.bits]).abs() <= bound).all()
    assert torch.equal(received[~mask.bits], version0[~mask.bits])
    assert torch.equal(current, server_model)


def test_int8_downlink_costs_a_quarter_of_fp32_and_leaves_full_syncs_exact() -> None:
    # Prepare: the same history and model, an fp32 and an int8 encoder
    mask = Mask(bits=torch.arange(P) % 10 == 0, version=1)
    version0, current = _moved(0, mask)
    history = ChangeHistory(P)
    history.record(mask.bits)
    exact, int8 = DownlinkEncoder(P), DownlinkEncoder(P, "int8", version0)

    # Execute
    exact_sync = exact.node_sync(history, current, 0, 1, mask, None)
    int8_sync = int8.node_sync(history, current, 0, 1, mask, None)
    full = int8.node_sync(history, current, None, None, mask, None)

    # Assert: int8 carries one byte per value (plus a scale per 256), fp32 four; fp32 values
    # are absolute and exact; a node that holds nothing gets the dense model in fp32
    assert len(exact_sync.payloads["model-values"]) - codec.HEADER_SIZE == 4 * mask.k
    assert len(int8_sync.payloads["model-values"]) - codec.HEADER_SIZE == int8_body_size(mask.k)
    assert "values-from" not in exact_sync.config
    assert torch.equal(codec.decode_values(exact_sync.payloads["model-values"], mask), current[mask.bits])
    assert full.config["sync"] == "full" and "values-from" not in full.config
    assert torch.equal(codec.decode_dense(full.payloads["model-dense"], P), current)


def test_explicit_positions_are_sent_as_changes_from_version_0_too() -> None:
    # Prepare: a node that holds version 1 while versions 2 and 3 changed other positions
    # (a mask refresh), so that it is sent explicit positions
    first = Mask(bits=torch.arange(P) < 60, version=1)
    second = Mask(bits=(torch.arange(P) >= 60) & (torch.arange(P) < 90), version=2)
    version0, current = _moved(1, first)
    current[second.bits] += 0.02
    history = ChangeHistory(P)
    for bits in (first.bits, second.bits, second.bits):
        history.record(bits)
    held = version0.clone()
    held[first.bits] = current[first.bits]
    holding = Holding()
    holding.set_model(held, 1, version0, "")
    encoder = DownlinkEncoder(P, "int8", version0)

    # Execute
    sync = encoder.node_sync(history, current, 1, 1, None, None)
    received = sync_model(_node_cfg(sync.config), sync.payloads, holding, version0, None)

    # Assert: only the positions changed since version 1, as int8 changes from version 0
    assert sync.config["sync"] == "delta" and sync.config["values-from"] == "version0"
    assert codec.decode_mask(sync.payloads["model-positions"]).k == second.k
    assert ((received - current).abs() <= 0.02 / INT8_MAX * 1.0001).all()
    assert torch.equal(received[first.bits], current[first.bits])


def test_a_node_that_cannot_rebuild_version_0_asks_for_the_base() -> None:
    # Prepare: an int8 delta-mask sync for a node that holds a dense model but not version 0
    mask = Mask(bits=torch.arange(P) % 7 == 0, version=1)
    version0, current = _moved(2, mask)
    history = ChangeHistory(P)
    history.record(mask.bits)
    sync = DownlinkEncoder(P, "int8", version0).node_sync(history, current, 0, 1, mask, None)
    holding = Holding()
    holding.set_model(version0, 0, None, "")

    # Execute / Assert: the change alone would be a wrong model, so the node says need-base;
    # an unknown reference is refused by name
    with pytest.raises(NeedBase):
        sync_model(_node_cfg(sync.config), sync.payloads, holding, None, mask)
    with pytest.raises(ValueError, match="values-from 'version7'"):
        sync_model(_node_cfg(sync.config, **{"values-from": "version7"}), sync.payloads, Holding(), version0, mask)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"dtype": "int4"}, "downlink dtype"), ({"dtype": "int8"}, "pass version0"),
     ({"dtype": "int8", "version0": torch.zeros(P - 1)}, "pass version0")],
)
def test_encoder_rejects_what_it_cannot_send(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DownlinkEncoder(P, **kwargs)


@pytest.mark.parametrize(
    "overrides", [{"strategy": "fedavg"}, {"public-initial-model": False}],
)
def test_config_refuses_a_quantised_downlink_without_a_public_version_0(overrides: dict) -> None:
    with pytest.raises(ConfigError, match="downlink-dtype"):
        RunConfig.from_mapping({"downlink-dtype": "int8", **overrides})


def test_an_int8_downlink_run_trains_like_the_fp32_run_for_a_quarter_of_the_values() -> None:
    # Prepare: 10 nodes, 2 per round, fixed 5% Fisher mask, seeded public version 0
    cfg = RunConfig(num_partitions=10, fraction_train=0.2, samples_per_client=32, batch_size=16, lr=0.05,
                    density=0.05, fisher_samples=16, eval_samples=100, seed=3)

    # Execute
    _, _, exact_traffic, exact_snaps, _ = run_strategy(cfg, 5)
    int8, _, int8_traffic, int8_snaps, _ = run_strategy(cfg.replace(downlink_dtype="int8"), 5)

    # Assert: every reply accepted; each training downlink is the mask's values in int8
    # (plus the mask on first contact; round 1's nodes hold version 0 and get the mask
    # alone); the model moves as in the fp32 run, within a few percent of how far it moved
    assert all(s.clients_rejected + s.clients_failed + s.clients_resynced == 0 for s in int8.round_stats.values())
    k, mask_bytes = int8.mask.k, len(codec.encode_mask(int8.mask))
    down = int8_traffic.to_frame().query("phase == 'train' and direction == 'down'").payload_bytes
    values = codec.HEADER_SIZE + int8_body_size(k)
    assert set(down) <= {mask_bytes, values, values + mask_bytes} and values + mask_bytes in set(down)
    exact_down = exact_traffic.to_frame().query("phase == 'train' and direction == 'down'").payload_bytes
    saved = codec.HEADER_SIZE + 4 * k - values  # fp32 values less int8 values, per message that carries them
    assert (exact_down.to_numpy() - down.to_numpy()).tolist() == [0 if d == mask_bytes else saved for d in down]
    moved = (exact_snaps[5] - exact_snaps[0]).norm()
    assert (int8_snaps[5] - exact_snaps[5]).norm() < 0.1 * moved
    assert not torch.equal(int8_snaps[5], exact_snaps[5])
