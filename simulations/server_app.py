"""FedFish ServerApp: parse the run config, set up the run, start the strategy, save results.

``flwr run .`` calls :func:`main` with ``context.run_config`` (pyproject defaults plus
``--run-config`` overrides); scripted runs call :func:`run_federation` directly.
"""

from __future__ import annotations

import random
import secrets
import threading
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedfish import codec
from fedfish.accounting import TrafficLog
from fedfish.dataconfig import DataConfigError
from fedfish.datasource import check as check_data
from fedfish.datasource import data_info, load_split
from fedfish.layout import ParamLayout, buffer_names, flatten_params, load_flat_params, params_digest
from fedfish.mask_sources import ScoreSettings, mask_source
from fedfish.masks import k_for_density
from fedfish.updates import update_rule
from fedfish.models import build_model, head_names, seeded_model
from simulations.checkpoint import RoundOffset, ServerState, load_checkpoint, remove_checkpoint, save_checkpoint
from simulations.config import ConfigError, RunConfig
from simulations.early_stop import Converged, Plateau
from simulations.recorder import RoundRecorder
from simulations.results import save_state_dict, unfinished_reason, write_bytes, write_json
from strategies.fedavg import CountingFedAvg
from strategies.fedfish import FedFish
from strategies.metering import MeteredGrid

app = ServerApp()

# Run-config keys every client needs; the server sends them in each message so that a
# ClientApp needs no run config of its own (scripted simulations have none).
CLIENT_KEYS = (
    "model", "dataset", "data-root", "data-files", "data-dir", "feature-column", "label-column", "partitioner",
    "partitioner-args", "alpha", "classes-per-partition", "num-partitions",
    "samples-per-client", "holdout-fraction", "seed", "local-epochs", "batch-size", "lr", "optimizer", "momentum",
    "weight-decay", "fisher-type", "fisher-samples", "fisher-label-samples", "fisher-upload",
    "fisher-upload-density", "fault-fail-fraction", "fault-forget-state", "run-name", "buffers",
)
# run-config strategy -> (mask source, update rule) of the FedFish strategy
METHODS = {
    "fedfish": ("fisher", "values"), "saliency": ("saliency", "values"), "magnitude": ("magnitude", "values"),
    "random-fixed": ("random-fixed", "values"), "random-per-round": ("random-per-round", "values"),
    "topk-ef": ("fisher", "topk-ef"),
}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: a config error, an interruption or skipped rounds raise, so
    that Flower records the run as failed (``python -m simulations.flwr_run`` exits non-zero)."""
    run_dir = run_federation(grid, RunConfig.from_mapping(context.run_config))
    reason = unfinished_reason(run_dir)
    if reason is not None:
        raise RuntimeError(f"run {run_dir.name!r} did not finish as asked: {reason}")


def run_federation(grid: Grid, cfg: RunConfig, stop: threading.Event | None = None) -> Path:
    """Run a whole federation on ``grid``; returns the results folder.

    After every round the server's state is checkpointed (:mod:`simulations.checkpoint`);
    with ``resume=true`` a run continues from the last complete round of the run of the
    same name, and ends with the same model and rounds.csv as an uninterrupted run. With
    ``stop-patience`` the run ends early once its accuracy has levelled off
    (:mod:`simulations.early_stop`); ``config.json`` then names the last round.
    """
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)  # for whatever draws from the global RNGs (user strategies, say)
    check_plugins(cfg)
    model = initial_model(cfg)
    layout = ParamLayout.of(model)
    run_dir = Path(cfg.results_dir) / cfg.run_name
    traffic = TrafficLog()
    metered = MeteredGrid(grid, traffic, model_bytes=4 * layout.num_params, stop=stop)
    strategy = build_strategy(cfg, model)
    test_x, test_y = load_split(cfg.data_config(), "test")
    if cfg.eval_samples:
        test_x, test_y = test_x[: cfg.eval_samples], test_y[: cfg.eval_samples]
    resumed = _restore(cfg, run_dir, strategy, traffic)
    done = resumed.server_round if resumed is not None else 0
    latest = [ArrayRecord(resumed.arrays) if resumed is not None else ArrayRecord(model.state_dict())]

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        latest[0] = arrays
        save_checkpoint(run_dir, ServerState.capture(server_round, cfg, arrays, strategy, traffic.records,
                                                     recorder.rows))

    write_json(run_dir / "config.json", _run_info(cfg, layout))
    plateau = Plateau(cfg.stop_patience, cfg.stop_min_delta) if cfg.stop_patience else None
    recorder = RoundRecorder(
        build_model(cfg.model, _num_classes(cfg), _input_shape(cfg)), (test_x, test_y), traffic,
        strategy.round_stats, run_dir, cfg.num_server_rounds,
        on_round=checkpoint, rows=resumed.rows if resumed is not None else None, plateau=plateau,
    )
    log(INFO, "FedFish run %r: strategy=%s, %d parameters, results in %s%s",
        cfg.run_name, cfg.strategy, layout.num_params, run_dir, f", resuming after round {done}" if done else "")
    runner = RoundOffset(strategy, done) if done else strategy
    evaluate_fn = runner.evaluate_fn(recorder) if isinstance(runner, RoundOffset) else recorder
    converged = plateau is not None and done > 0 and plateau.reached([float(r["accuracy"]) for r in recorder.rows])
    if done < cfg.num_server_rounds and not converged:
        try:
            runner.start(
                grid=metered,
                initial_arrays=latest[0],
                num_rounds=cfg.num_server_rounds - done,
                timeout=cfg.round_timeout,
                train_config=ConfigRecord(client_config(cfg)),
                evaluate_config=ConfigRecord(client_config(cfg)),
                evaluate_fn=evaluate_fn,
            )
        except Converged as stop:
            log(INFO, "%s", stop)
    _save_final(run_dir, cfg, layout, latest[0], strategy, last_round=int(recorder.rows[-1]["round"]))
    return run_dir


def _restore(cfg: RunConfig, run_dir: Path, strategy: Strategy, traffic: TrafficLog) -> ServerState | None:
    """With ``resume``, load the last checkpoint into ``strategy``, ``traffic`` and the global RNGs."""
    if not cfg.resume:
        remove_checkpoint(run_dir)
        return None
    state = load_checkpoint(run_dir)
    if state is None:
        log(WARNING, "resume: no checkpoint in %s; starting run %r from round 1", run_dir, cfg.run_name)
        return None
    state.check_matches(cfg)
    if state.strategy:
        strategy.load_state_dict(state.strategy)  # type: ignore[attr-defined]
    state.restore_random()
    traffic.extend(state.traffic)
    return state


def method_of(cfg: RunConfig) -> tuple[str, str]:
    """(mask source, update rule) of a FedFish run: the strategy's, unless overridden."""
    source, update = METHODS[cfg.strategy]
    return cfg.mask_source or source, cfg.update_rule or update


def check_plugins(cfg: RunConfig) -> None:
    """What can only be checked by loading it (the data, the model, the method's plug-ins),
    before any training: a ConfigError naming the run-config key at fault."""
    try:
        check_data(cfg.data_config())
    except DataConfigError as err:
        raise ConfigError(str(err)) from None
    if cfg.strategy != "fedavg":
        source, update = method_of(cfg)
        for key, resolve_plugin, name in (("mask-source", mask_source, source), ("update-rule", update_rule, update)):
            try:
                resolve_plugin(name)
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None
    try:
        model = build_model(cfg.model, _num_classes(cfg), _input_shape(cfg))
        head = head_names(model)
        with torch.no_grad():
            model.eval()(torch.zeros(2, *_input_shape(cfg)))
    except Exception as err:  # noqa: BLE001 - whatever a user's model raises is reported under its key
        raise ConfigError(f"model: {cfg.model!r} does not build or run on inputs of shape "
                          f"{_input_shape(cfg)}: {type(err).__name__}: {err}") from err
    layout = ParamLayout.of(model)
    head_size = int(layout.indicator(head).sum())
    if cfg.strategy != "fedavg" and head_size > k_for_density(layout.num_params, cfg.density):
        raise ConfigError(f"density: the classifier head alone ({head_size} parameters) exceeds the mask of "
                          f"{k_for_density(layout.num_params, cfg.density)}; use density >= "
                          f"{head_size / layout.num_params:.4f}")


def initial_model(cfg: RunConfig) -> torch.nn.Module:
    """The model to start from: ``initial-model`` (a saved state_dict) or the seeded init,
    which every client can rebuild (:func:`fedfish.models.seeded_model`)."""
    model = seeded_model(cfg.model, cfg.seed, _num_classes(cfg), _input_shape(cfg))
    if cfg.initial_model:
        path = Path(cfg.initial_model)
        if not path.is_file():
            raise ConfigError(f"initial-model: no such file {str(path)!r}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is no state_dict
            raise ConfigError(f"initial-model: {path} is not a saved state_dict ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"initial-model: {path} holds a {type(state).__name__}, not a state_dict of tensors")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"initial-model: {path} does not fit model {cfg.model!r}: {err}") from err
    return model


def client_config(cfg: RunConfig) -> dict[str, int | float | str | bool | list[int]]:
    """The subset of the run config that clients need, and the data's class count and input shape."""
    mapping = cfg.to_mapping()
    return {key: mapping[key] for key in CLIENT_KEYS} | {
        "num-classes": _num_classes(cfg), "input-shape": list(_input_shape(cfg)),
    }


def examples_bound(cfg: RunConfig):  # noqa: ANN201 - a closure
    """partition -> the most examples its replies may claim: its shard, as the server partitions
    the same data (capped by ``samples-per-client``); None for a partition it does not know."""
    sizes = data_info(cfg.data_config()).partition_sizes
    cap = cfg.samples_per_client or None

    def bound(partition: int) -> int | None:
        if not 0 <= partition < len(sizes):
            return None
        return min(sizes[partition], cap) if cap else sizes[partition]

    return bound


def build_strategy(cfg: RunConfig, model: torch.nn.Module) -> Strategy:
    """The strategy named by ``cfg.strategy``; every one exposes ``round_stats``."""
    if cfg.strategy == "fedavg":
        return CountingFedAvg(
            min_replies=cfg.min_replies,
            examples_bound=examples_bound(cfg),
            num_partitions=cfg.num_partitions,
            max_update_norm=cfg.max_update_norm or None,
            update_norm_factor=cfg.update_norm_factor or None,
            seed=cfg.seed,
            enrol_config={"run-name": cfg.run_name, "run-token": secrets.token_hex(16), "client-state-dir": ""},
            round_timeout=cfg.round_timeout,
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if cfg.fraction_evaluate > 0 else 0,
            min_available_nodes=1,
        )
    layout = ParamLayout.of(model)
    source, update = method_of(cfg)
    on_server = mask_source(source).kind == "model" or cfg.fisher_source == "server"
    return FedFish(
        layout=layout,
        head=layout.indicator(head_names(model)),
        client_config=client_config(cfg) | public_base_config(cfg, model) | {"client-state-dir": cfg.client_state_folder()},
        mask_source=source,
        update=update,
        density=cfg.density,
        mask_scope=cfg.mask_scope,
        warmup_rounds=cfg.warmup_rounds,
        mask_refresh=cfg.mask_refresh,
        value_dtype=cfg.value_dtype,
        downlink_dtype=cfg.downlink_dtype,
        version0=flatten_params(model) if cfg.downlink_dtype != "fp32" else None,
        error_feedback=cfg.error_feedback,
        fisher_source=cfg.fisher_source,
        server_scores_fn=server_scores_fn(cfg, model, source) if on_server else None,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_replies=cfg.min_replies,
        examples_bound=examples_bound(cfg),
        num_partitions=cfg.num_partitions,
        round_timeout=cfg.round_timeout,
        max_update_norm=cfg.max_update_norm or None,
        update_norm_factor=cfg.update_norm_factor or None,
        aggregator=cfg.aggregator,
        trim_fraction=cfg.trim_fraction,
        robust_calibration=cfg.robust_calibration,
        seed=cfg.seed,
        public_base=cfg.public_initial_model,
        buffer_names=buffer_names(model),
        buffers=cfg.buffers,
    )


def public_base_config(cfg: RunConfig, model: torch.nn.Module) -> dict[str, str]:
    """With ``public-initial-model``: the digest clients check version 0 against, and where
    they find the checkpoint ("" = the seeded initial model)."""
    if not cfg.public_initial_model:
        return {}
    path = str(Path(cfg.initial_model).resolve()) if cfg.initial_model else ""
    return {"initial-model": path, "public-base-digest": params_digest(flatten_params(model))}


def server_scores_fn(cfg: RunConfig, model: torch.nn.Module, source_name: str):  # noqa: ANN201 - a closure
    """Scores of mask source ``source_name`` computed on the server, with no client traffic:
    from the global model alone (``kind="model"``), or on the proxy set: ``server-samples``
    examples of the public held-out split when ``holdout-fraction`` > 0 (data no client
    holds), else of the training set, drawn with the run's seed."""
    source = mask_source(source_name)
    scratch = build_model(cfg.model, _num_classes(cfg), _input_shape(cfg))
    if source.kind == "model":

        def model_scores(flat: torch.Tensor) -> torch.Tensor:
            load_flat_params(scratch, flat)
            return source.scores(scratch, None, ScoreSettings())

        return model_scores
    x, y = load_split(cfg.data_config(), "public" if cfg.holdout_fraction > 0 else "train")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.server_samples]
    proxy = (x[pick], y[pick])

    def scores(flat: torch.Tensor) -> torch.Tensor:
        load_flat_params(scratch, flat)
        settings = ScoreSettings(cfg.fisher_type, cfg.fisher_label_samples, torch.Generator().manual_seed(cfg.seed))
        return source.scores(scratch, proxy, settings)

    return scores


def _num_classes(cfg: RunConfig) -> int:
    return data_info(cfg.data_config()).num_classes


def _input_shape(cfg: RunConfig) -> tuple[int, ...]:
    return tuple(data_info(cfg.data_config()).input_shape)


def _run_info(cfg: RunConfig, layout: ParamLayout) -> dict[str, object]:
    return {"config": cfg.to_mapping(), "num_params": layout.num_params, "seed": cfg.seed}


def _save_final(
    run_dir: Path, cfg: RunConfig, layout: ParamLayout, arrays: ArrayRecord, strategy: Strategy, last_round: int
) -> None:
    save_state_dict(run_dir / "model.pt", arrays.to_torch_state_dict())
    info = _run_info(cfg, layout) | {"last_round": last_round}
    mask = getattr(strategy, "mask", None)
    if mask is not None:
        write_bytes(run_dir / "mask.bin", codec.encode_mask(mask))
        info |= {"mask_digest": mask.digest, "mask_version": mask.version, "mask_k": mask.k}
    write_json(run_dir / "config.json", info)
