"""lm-evaluation-harness against ``lwm evaluate``, and ``lwm evaluate --tasks`` end to end on a
learnware fetched from a real market on loopback (the tiny model throughout)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import build_learnware, random_rkme_spec, rkme_schema, train_lora_adapter, write_specs
from market_fixtures import market_server
from test_contribute import lwm

from client.cli_harness import _print_scores
from client.evaluate import evaluate_model
from client.harness import HarnessResult, TaskScore, prepared_tasks, run_tasks, write_local_task
from server.records import Role
from shared.data import DataSource, Record, load_domain
from shared.errors import FailedPrecondition
from shared.models import model_ref

pytest.importorskip("lm_eval", reason="lm-eval is the optional extra .[eval]")


def _texts(tokenizer) -> list[str]:
    """Short real texts and one long enough for several context windows (the last partial)."""
    long = " ".join(load_domain("law/licenses")[1:3])
    n = len(tokenizer(long, add_special_tokens=False)["input_ids"])
    assert n > 256 and n % 256  # two windows, the second partial
    return [*load_domain("finance")[:5], long]


def _yaml_task(path: Path, name: str, data: Path) -> Path:
    """A text task as a user writes it for lm-eval: rolling perplexity over a JSONL file."""
    path.write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: text\nmetric_list:\n'
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    return path


def test_lm_eval_perplexity_equals_lwm_evaluate_on_the_same_text(tiny, tmp_path):
    """lm-eval used as its docs say (a YAML task over a JSON file, HFLM on the model object)
    reports the very word and byte perplexity and bits per byte of ``evaluate_model``: same
    windows and contexts (a text longer than the 256-token context included), same counts."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    texts = _texts(tiny.tokenizer)
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    _yaml_task(tmp_path / "notes.yaml", "notes", tmp_path / "notes.jsonl")
    tasks = TaskManager(include_defaults=False).load(str(tmp_path / "notes.yaml"))
    lm = HFLM(pretrained=tiny.model, tokenizer=tiny.tokenizer, batch_size=4)

    theirs = evaluator.evaluate(lm, tasks, bootstrap_iters=0)["results"]["notes"]
    ours = evaluate_model(tiny.model, tiny.tokenizer, [Record(text=t) for t in texts])

    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert theirs[f"{metric},none"] == pytest.approx(getattr(ours, metric), rel=1e-6)


def test_a_labelled_file_becomes_a_multiple_choice_task(tmp_path):
    import yaml

    records = [Record(prompt=f"Is {n} even?", response="yes" if n % 2 else "no") for n in range(6)]
    quiz = Record(prompt="2 + 2?", response="4", choices=("3", "4", "5"))  # its own choices

    config = yaml.safe_load(write_local_task(tmp_path, "lwm_parity", [*records, quiz]).read_text())

    assert config["output_type"] == "multiple_choice" and config["dataset_path"] == "json"
    assert config["doc_to_choice"] == "choices" and config["target_delimiter"] == "\n"
    rows = [json.loads(line) for line in (tmp_path / "lwm_parity.jsonl").read_text().splitlines()]
    assert rows[1] == {"prompt": "Is 1 even?", "choices": ["no", "yes"], "label": 1}
    assert rows[-1] == {"prompt": "2 + 2?", "choices": ["3", "4", "5"], "label": 1}


def test_own_files_run_as_tasks_on_adapter_and_base(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    text = tmp_path / "notes.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(tiny.tokenizer)))
    pairs = tmp_path / "sentiment.csv"
    pairs.write_text("prompt,response\nGreat results,good\nLosses again,bad\nRecord year,good\n")
    own = _yaml_task(tmp_path / "mine.yaml", "mine", text)  # a task the user wrote
    config = LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny.model, config).eval()
    learnware = SimpleNamespace(active_model=lambda: model, tokenizer=tiny.tokenizer)
    try:
        names = [str(text), str(pairs), str(own)]
        with prepared_tasks(names, DataSource(Path())) as tasks:
            result = run_tasks(learnware, tasks, batch_size=4)  # type: ignore[arg-type]
        with model.disable_adapter():
            base = evaluate_model(
                model, tiny.tokenizer, [Record(text=t) for t in _texts(tiny.tokenizer)]
            )
    finally:
        model.unload()  # tiny.model back as it was for the other tests

    scores = {(s.task, s.metric): s for s in result.scores}
    assert set(scores) == {
        ("lwm_notes", "word_perplexity"), ("lwm_notes", "byte_perplexity"),
        ("lwm_notes", "bits_per_byte"), ("lwm_sentiment", "acc"), ("lwm_sentiment", "acc_norm"),
        ("mine", "word_perplexity"), ("mine", "byte_perplexity"), ("mine", "bits_per_byte"),
    }  # fmt: skip
    assert scores["mine", "word_perplexity"] == replace(
        scores["lwm_notes", "word_perplexity"], task="mine"
    )
    assert scores["lwm_notes", "word_perplexity"].base == pytest.approx(
        base.word_perplexity, rel=1e-6
    )
    assert (
        scores["lwm_notes", "word_perplexity"].learnware
        != scores["lwm_notes", "word_perplexity"].base
    )
    assert 0 <= scores["lwm_sentiment", "acc"].learnware <= 1


def test_without_lm_eval_tasks_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    tasks = prepared_tasks(["hellaswag"], DataSource(Path()))
    with pytest.raises(FailedPrecondition, match=r"install \.\[eval\]"):
        tasks.__enter__()


def test_the_table_shows_task_metric_base_and_learnware(capsys):
    result = HarnessResult((TaskScore("lwm_notes", "word_perplexity", 12.5, 20.25),), 1.0)

    _print_scores("bank-notes", result)

    row = next(line for line in capsys.readouterr().out.splitlines() if "lwm_notes" in line)
    assert row.index("word_perplexity") < row.index("20.25") < row.index("12.5")


# ---------------------------------------------------------------- end to end, through the CLI


@pytest.fixture(scope="module")
def market(tmp_path_factory, lwm_home):
    """A market on loopback holding one learnware: a one-step LoRA of ``tiny``."""
    tmp = tmp_path_factory.mktemp("harness")
    with market_server(tmp, lwm_home, run_smoke=False) as m:
        bank = m.new_key("bank", Role.CONTRIBUTOR)
        m.new_key("reader", Role.USER)
        package = build_learnware(
            tmp / "lw",
            adapter=train_lora_adapter(lwm_home, tmp / "adapter"),
            spec_file=write_specs(
                tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(lwm_home))]
            ),
            base=model_ref("tiny", lwm_home),
            private_key=bank,
            name="bank-notes",
        )
        reply = m.client("bank").submit(package)
        yield SimpleNamespace(market=m, id=reply.id)


def test_lwm_evaluate_tasks_on_a_fetched_learnware(market, lwm_home, tmp_path, monkeypatch, capsys):
    m = market.market
    home = ["--home", str(lwm_home.root)]
    args = [
        "--server",
        m.address,
        "--key",
        str(m.keys_dir / "reader.key"),
        "--ca",
        str(m.layout.ca_cert),
    ]
    out = tmp_path / "fetched"
    code, _, err = lwm(monkeypatch, capsys, "fetch", market.id, "--out", str(out), *args, *home)
    assert code == 0, err
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in load_domain("finance")[:8]))

    code, harness, err = lwm(
        monkeypatch, capsys, "evaluate", str(out), "--tasks", str(data), "--json", *home
    )
    assert code == 0, err
    code, builtin, err = lwm(
        monkeypatch, capsys, "evaluate", str(out), str(data), "--with-base", "--json", *home
    )
    assert code == 0, err

    figures = {(s["task"], s["metric"]): s for s in json.loads(harness)["scores"]}
    own = json.loads(builtin)
    word = figures["lwm_notes", "word_perplexity"]
    assert word["learnware"] == pytest.approx(own["result"]["word_perplexity"], rel=1e-6)
    assert word["base"] == pytest.approx(own["base"]["word_perplexity"], rel=1e-6)
    assert json.loads(harness)["name"] == "bank-notes"
