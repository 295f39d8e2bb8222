"""The data holder's Flower ClientApp (Message API): train the LoRA adapter, release a spec.

``make_client_app(config)`` closes over the federation config; Flower's simulation engine
ships the app to its workers. ``make_client_app()`` (no config) is the deployment engine's
app (``client.federation.deploy``): it reads ``FED.toml`` from the node config ``config``
(this machine's copy) or else the run config ``config`` (``flwr run --run-config``). The
holder is picked by ``node_config["partition-id"]`` (set by the simulation engine; on a
real SuperNode pass ``--node-config "partition-id=K"`` for the K-th ``[[holders]]``).

- ``train``: the received ``ArrayRecord`` holds the global LoRA tensors
  (``get_peft_model_state_dict``); they are loaded into a fresh peft model over the base,
  trained ``local_steps`` steps with ``client.finetune``'s loop on this holder's texts, and
  sent back with ``num-examples`` and the holder's accountant (``accountant``).
  Base weights never move and never travel.
- ``query``: the DP spec of the holder's texts under the market schema the server sends
  (``spec`` = the spec's safetensors bytes, ``n`` = number of texts). Texts never leave.

What a worker process loads once (the config of a deployment, the base model, the holder's
texts) is kept in the ``AppCache`` its app factory made, never in module state.

Under DP (``training.dp_epsilon``) each round is opacus DP-SGD; the holder's RDP accountant history
lives in ``context.state["accountant"]`` and is loaded into each round's PrivacyEngine, so
the epsilon grows across rounds and is never reset. Each train reply carries that history,
so the server accounts the adapter from exactly the holders whose updates it averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.federation.config import FederationConfig
from shared.data.columns import DataSource
from shared.dpsgd import History
from shared.errors import InvalidInput
from shared.models.device import CPU, Placement

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.home import Home
    from shared.models import LoadedModel


class AppCache:
    """What one app loads once in its process, by (kind, key): the deployment's config, the
    base model, a holder's texts. Made by the app factory and owned by the app, so two
    apps in one process never share (or leak) what they loaded."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, key: str, load: Callable[[], Any]) -> Any:
        if (kind, key) not in self._items:
            self._items[(kind, key)] = load()
        return self._items[(kind, key)]


def partition_id(context: Any) -> int:
    """This SuperNode's holder index, from its node config (``partition-id``)."""
    raw = context.node_config.get("partition-id")
    if raw is None:
        raise RuntimeError(
            "node_config has no partition-id: cannot tell which holder this is "
            '(start the SuperNode with --node-config "partition-id=K")'
        )
    return int(raw)


def holder_index(context: Any, config: FederationConfig) -> int:
    """``partition_id`` checked against the config's holders."""
    index = partition_id(context)
    if not 0 <= index < len(config.holders):
        raise RuntimeError(f"partition-id {index} but only {len(config.holders)} holders")
    return index


def config_path(context: Any) -> Path:
    """The deployment's ``FED.toml``: this node's own copy if its node config names one."""
    raw = context.node_config.get("config") or context.run_config.get("config")
    if not raw:
        raise RuntimeError(
            "no federation config: pass --run-config \"config='/abs/FED.toml'\" to flwr run "
            "(or --node-config \"config='/abs/FED.toml'\" to this SuperNode)"
        )
    return Path(str(raw)).expanduser()


def deployed_config(
    context: Any, machine: str | int, cache: AppCache | None = None
) -> FederationConfig:
    """The config a deployed app reads at its first message, checked for ``machine``.

    Kept in ``cache`` by path, modification time and machine, so a long-lived worker
    picks up an edited file on the next run and still parses it once per run.
    """
    path = config_path(context)
    if not path.is_file():
        raise InvalidInput(f"the federation config {path} is not a file on this machine")
    key = f"{path.resolve()}@{path.stat().st_mtime_ns}@{machine}"
    config: FederationConfig = (cache or AppCache()).get(
        "config", key, lambda: FederationConfig.from_toml(path, machine=machine)
    )
    return config


def home_of(config: FederationConfig) -> Home:
    from shared.home import Home

    return Home(config.home) if config.home is not None else Home.resolve()


def base_model(
    config: FederationConfig, cache: AppCache, placement: Placement = CPU
) -> LoadedModel:
    """The base model, loaded once per app on ``placement`` (a holder's:
    ``config.placement()``; the coordinator's stays on the CPU, where it only builds the
    initial adapter and saves the merged one)."""
    from shared.models import load_causal_lm

    key = f"{config.base_model}@{config.home}@{placement}"
    model: LoadedModel = cache.get(
        "base", key, lambda: load_causal_lm(config.base_model, home_of(config), placement)
    )
    return model


def holder_texts(config: FederationConfig, index: int, cache: AppCache) -> list[str]:
    from client.contribute import load_texts

    holder = config.holders[index]
    on_disk = isinstance(holder.data, Path | DataSource)
    key = str(holder.data) if on_disk else f"{index}:{holder.name}"
    return list(cache.get("texts", key, lambda: load_texts(holder.data)))


def train_round(
    config: FederationConfig,
    base: LoadedModel,
    arrays: Any,
    texts: list[str],
    seed: int,
    history: History | None = None,
) -> tuple[dict[str, Any], list[float], History]:
    """Load the global LoRA tensors and train ``local_steps`` steps on ``texts``.

    Returns the LoRA state dict, the losses and the holder's RDP accountant history after
    this round: ``history`` (the rounds before) plus this round's entry under DP-SGD, or
    empty without DP. Under DP the noise multiplier is calibrated once for the WHOLE run
    (``total_steps`` at ``training.dp_epsilon``), so the accountant ends at the budget
    after the last round instead of spending it every round.
    """
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from client.finetune import (
        TrainTrace,
        lora_b_snapshot,
        lora_model,
        require_trained,
        tokenize,
        train_plain,
    )

    finetune = config.training
    config.check_holder_fits(len(texts))  # before the first step; calibrations are cached
    ids, mask = tokenize(texts, base.tokenizer, finetune.max_tokens)
    history = list(history or ())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lora_model(base, finetune)
        set_peft_model_state_dict(model, arrays.to_torch_state_dict())
        before = lora_b_snapshot(model)
        trace = TrainTrace(None)
        if finetune.budget.is_private:
            history = _train_dp_round(model, ids, mask, config, trace, history)
        else:
            train_plain(model, ids, mask, finetune, trace)
    require_trained(before, lora_b_snapshot(model))
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, trace.losses, history


def _train_dp_round(
    model: Any,
    ids: Any,
    mask: Any,
    config: FederationConfig,
    trace: Any,
    history: History,
) -> History:
    """One round of opacus DP-SGD whose accountant starts from the earlier rounds' history;
    the noise is calibrated for all rounds, so the budget covers the whole federation."""
    from client.finetune import private_steps

    accountant, _, _ = private_steps(
        model,
        ids,
        mask,
        config.training,
        trace,
        calibration_steps=config.total_steps,
        history=history,
    )
    return [(float(s), float(q), int(k)) for s, q, k in accountant.history]


def history_record(history: History) -> Any:
    """An accountant history as a ConfigRecord (three parallel lists), for state and replies."""
    from flwr.app import ConfigRecord

    return ConfigRecord(
        {
            "sigma": [float(s) for s, _, _ in history],
            "sample_rate": [float(q) for _, q, _ in history],
            "steps": [int(k) for _, _, k in history],
        }
    )


def history_of(record: Any) -> History:
    """The inverse of ``history_record``; None (no record) is an empty history."""
    if record is None:
        return []
    sigmas, rates, steps = (list(record[k]) for k in ("sigma", "sample_rate", "steps"))
    return [(float(s), float(q), int(k)) for s, q, k in zip(sigmas, rates, steps, strict=True)]


def _load_history(context: Any) -> History:
    return history_of(context.state.get("accountant"))


def _save_history(context: Any, history: History) -> None:
    context.state["accountant"] = history_record(history)


def holder_epsilon(history: History, delta: float) -> float | None:
    from shared.privacy import rdp_epsilon

    return rdp_epsilon(list(history), delta) if history else None


def make_client_app(config: FederationConfig | None = None) -> Any:
    """The holder's ClientApp; ``config`` None reads it per run (``deployed_config``)."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    app = ClientApp()
    cache = AppCache()

    def resolve(context: Context) -> tuple[FederationConfig, int]:
        if config is not None:
            fed = config
        else:
            fed = deployed_config(context, partition_id(context), cache)
        return fed, holder_index(context, fed)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fed, index = resolve(context)
        return train_reply(msg, context, fed, index, cache)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        fed, index = resolve(context)
        return spec_reply(msg, fed, index, cache)

    return app


def train_reply(
    msg: Any, context: Any, config: FederationConfig, index: int, cache: AppCache
) -> Any:
    """One round on holder ``index``: the trained LoRA tensors, metrics and accountant."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    texts = holder_texts(config, index, cache)
    cfg: Any = msg.content.get("config") or {}
    server_round = int(cfg.get("server-round", 0))
    state, losses, history = train_round(
        config,
        base_model(config, cache, config.placement()),
        msg.content["arrays"],
        texts,
        seed=1000 * server_round + index,
        history=_load_history(context),
    )
    _save_history(context, history)
    finite = [x for x in losses if x == x]
    # The same metric keys from every holder, or FedAvg refuses to aggregate the round.
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": len(texts),
        "train-loss": float(finite[-1]) if finite else float("nan"),
    }
    epsilon = holder_epsilon(history, config.delta)
    if epsilon is not None:
        metrics["epsilon"] = epsilon
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord(metrics),
            "accountant": history_record(history),
        }
    )
    return Message(content=content, reply_to=msg)


def spec_reply(msg: Any, config: FederationConfig, index: int, cache: AppCache) -> Any:
    """Holder ``index``'s DP spec of each kind, under the market schema the server sent."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from client.contribute import spec_maker
    from shared.spec.schema import MarketSchema

    texts = holder_texts(config, index, cache)
    schema = MarketSchema.from_json(str(msg.content["config"]["schema"]))
    placement = config.placement()
    maker = spec_maker(schema, home_of(config), *config.spec.kinds, placement=placement)
    budget = config.spec.budget(config.delta)
    specs = [maker.make(texts, kind, budget) for kind in config.spec.kinds]
    reply = ConfigRecord({"specs": [s.to_bytes() for s in specs], "n": specs[0].n, "holder": index})
    return Message(content=RecordDict({"spec": reply}), reply_to=msg)
