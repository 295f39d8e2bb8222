"""The data holder's Flower ClientApp (Message API): train the LoRA adapter, release a spec.

``make_client_app(config)`` closes over the federation config; Flower's simulation engine
ships the app to its workers. The holder is picked by ``node_config["partition-id"]`` (set
by the simulation engine; on a real SuperNode pass ``--node-config "partition-id=K"``).

- ``train``: the received ``ArrayRecord`` holds the global LoRA tensors
  (``get_peft_model_state_dict``); they are loaded into a fresh peft model over the base,
  trained ``local_steps`` steps with ``client.finetune``'s loop on this holder's texts, and
  sent back with ``num-examples``. Base weights never move and never travel.
- ``query``: the DP spec of the holder's texts under the market schema the server sends
  (``spec`` = the spec's safetensors bytes, ``n`` = number of texts). Texts never leave.

With ``train_epsilon`` each round is opacus DP-SGD; the holder's RDP accountant history
lives in ``context.state["accountant"]`` and is loaded into each round's PrivacyEngine, so
the epsilon grows across rounds and is never reset. The query reply carries that history
so the server can account the adapter.
"""

from __future__ import annotations

from typing import Any

from client.federation.config import FederationConfig

_CACHE: dict[tuple[str, str], Any] = {}  # per worker process: (kind, key) -> loaded thing


def holder_index(context: Any, config: FederationConfig) -> int:
    raw = context.node_config.get("partition-id")
    if raw is None:
        raise RuntimeError("node_config has no partition-id: cannot tell which holder this is")
    index = int(raw)
    if not 0 <= index < len(config.holders):
        raise RuntimeError(f"partition-id {index} but only {len(config.holders)} holders")
    return index


def home_of(config: FederationConfig) -> Any:
    from shared.home import Home

    return Home(config.home) if config.home is not None else Home.resolve()


def base_model(config: FederationConfig) -> Any:
    from shared.models import load_causal_lm

    key = ("base", f"{config.base_model}@{config.home}")
    if key not in _CACHE:
        _CACHE[key] = load_causal_lm(config.base_model, home_of(config))
    return _CACHE[key]


def holder_texts(config: FederationConfig, index: int) -> list[str]:
    from client.contribute import load_texts

    holder = config.holders[index]
    key = ("texts", str(holder.data))
    if key not in _CACHE:
        _CACHE[key] = load_texts(holder.data)
    return list(_CACHE[key])


def train_round(
    config: FederationConfig,
    arrays: Any,
    texts: list[str],
    seed: int,
    history: list[tuple[float, float, int]] | None = None,
) -> tuple[dict[str, Any], list[float], list[tuple[float, float, int]]]:
    """Load the global LoRA tensors and train ``local_steps`` steps on ``texts``.

    Returns the LoRA state dict, the losses and the holder's RDP accountant history after
    this round: ``history`` (the rounds before) plus this round's entry under DP-SGD, or
    empty without DP. Under DP the noise multiplier is calibrated once for the WHOLE run
    (``rounds * local_steps`` steps at ``train_epsilon``), so the accountant ends at the
    budget after the last round instead of spending it every round.
    """
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from client.finetune import _require_trained, _Trace, _train_plain, lora_model, tokenize

    finetune = config.finetune
    base = base_model(config)
    ids, mask = tokenize(texts, base.tokenizer, finetune.max_tokens)
    history = list(history or [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lora_model(base, finetune)
        set_peft_model_state_dict(model, arrays.to_torch_state_dict())
        before = [p.detach().clone() for n, p in sorted(model.named_parameters()) if "lora_B" in n]
        trace = _Trace(None)
        if finetune.budget.is_private:
            history = _train_dp_round(model, ids, mask, config, trace, history)
        else:
            _train_plain(model, ids, mask, finetune, trace)
    after = [p.detach().clone() for n, p in sorted(model.named_parameters()) if "lora_B" in n]
    _require_trained(before, after)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, trace.losses, history


def _train_dp_round(
    model: Any,
    ids: Any,
    mask: Any,
    config: FederationConfig,
    trace: Any,
    history: list[tuple[float, float, int]],
) -> list[tuple[float, float, int]]:
    """One round of opacus DP-SGD whose accountant starts from the earlier rounds' history."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from client.finetune import _dp_loop, _optimizer, _trainable
    from shared.privacy import dpsgd_noise_multiplier

    finetune = config.finetune
    n = int(ids.shape[0])
    loader = DataLoader(TensorDataset(ids, mask), batch_size=min(finetune.batch_size, n))
    sample_rate = 1.0 / len(loader)
    sigma = dpsgd_noise_multiplier(
        finetune.budget, sample_rate=sample_rate, steps=config.rounds * config.local_steps
    )
    params = _trainable(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant.history = list(history)  # carried across rounds, never reset
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=_optimizer(params, finetune),
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=finetune.clip_norm,
            poisson_sampling=True,
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook")
            _dp_loop(dp_model, dp_optimizer, dp_loader, params, finetune.steps, trace)
    finally:
        dp_model.remove_hooks()
    return [(float(s), float(q), int(k)) for s, q, k in engine.accountant.history]


def _load_history(context: Any) -> list[tuple[float, float, int]]:
    record = context.state.get("accountant")
    if record is None:
        return []
    sigmas, rates, steps = (list(record[k]) for k in ("sigma", "sample_rate", "steps"))
    return [(float(s), float(q), int(k)) for s, q, k in zip(sigmas, rates, steps, strict=True)]


def _save_history(context: Any, history: list[tuple[float, float, int]]) -> None:
    from flwr.app import ConfigRecord

    context.state["accountant"] = ConfigRecord(
        {
            "sigma": [float(s) for s, _, _ in history],
            "sample_rate": [float(q) for _, q, _ in history],
            "steps": [int(k) for _, _, k in history],
        }
    )


def holder_epsilon(history: list[tuple[float, float, int]], delta: float) -> float | None:
    from shared.privacy import rdp_epsilon

    return rdp_epsilon(history, delta) if history else None


def make_client_app(config: FederationConfig) -> Any:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = holder_index(context, config)
        texts = holder_texts(config, index)
        cfg: Any = msg.content.get("config") or {}
        server_round = int(cfg.get("server-round", 0))
        state, losses, history = train_round(
            config,
            msg.content["arrays"],
            texts,
            seed=1000 * server_round + index,
            history=_load_history(context),
        )
        _save_history(context, history)
        metrics: dict[str, int | float | list[int] | list[float]] = {"num-examples": len(texts)}
        finite = [x for x in losses if x == x]
        if finite:
            metrics["train-loss"] = float(finite[-1])
        epsilon = holder_epsilon(history, config.delta)
        if epsilon is not None:
            metrics["epsilon"] = epsilon
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from client.contribute import _spec_maker
        from shared.spec.schema import MarketSchema

        index = holder_index(context, config)
        texts = holder_texts(config, index)
        schema_json = str(msg.content["config"]["schema"])
        schema = MarketSchema.from_json(schema_json)
        cfg = config.contribute_config
        maker = _spec_maker(schema, home_of(config), config.spec_kind)
        spec = maker.make(texts, config.spec_kind, cfg.spec_budget)
        history = _load_history(context)
        reply = ConfigRecord(
            {
                "spec": spec.to_bytes(),
                "n": spec.n,
                "holder": index,
                "sigma": [float(s) for s, _, _ in history],
                "sample_rate": [float(q) for _, q, _ in history],
                "steps": [int(k) for _, _, k in history],
            }
        )
        return Message(content=RecordDict({"spec": reply}), reply_to=msg)

    return app
