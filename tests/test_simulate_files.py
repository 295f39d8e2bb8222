"""``lwm simulate`` on a consortium's own files (issue 15, item 5): contributors and users
from JSONL, CSV, parquet and a ``save_to_disk`` folder beside a built-in corpus, a
multiple-choice user task scored by acc and acc_norm (checked against an independent
computation on the same models), and config errors at load time.

No Flower federation here (every contributor is one holder), so no Ray: the file stays out
of the Makefile's RAY_TESTS.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from client.simulate.config import SimulationConfig, Users
from client.simulate.data import deal
from client.simulate.example import sim_toml, write_example
from shared.data import DataSource, Record, load_dataset
from shared.data.tasks import candidates, predict
from shared.errors import AlreadyExists, DataError, InvalidInput

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented example: the consortium's files and SIM.toml."""
    return write_example(tmp_path_factory.mktemp("consortium") / "files")


# ---------------------------------------------------------------- config and deal


def test_files_and_a_corpus_deal_side_by_side_read_relative_to_the_toml(example, monkeypatch):
    monkeypatch.chdir(example.parent.parent)  # relative paths must not follow the cwd
    config = SimulationConfig.from_toml(example)
    formats = {
        c.name: load_dataset(c.sources[0]).format
        for c in config.contributors
        if isinstance(c.sources[0], DataSource)
    }
    assert formats == {
        "ward-cardiology": "jsonl",
        "ward-oncology": "csv",
        "bank": "parquet",
        "registry": "hf-arrow",
    }
    assert config.contributors[-1].sources == ("math",)
    dealt = deal(config)
    seen: set[str] = set()
    for holders in dealt.holders.values():
        texts = set(holders[0].training_texts())
        assert texts and not texts & seen
        seen |= texts
    users = {u.name: u for u in dealt.users}
    assert not {t for u in dealt.users for t in u.spec_texts()} & seen
    quiz = users["chapter-quiz"]
    assert quiz.kind == "task" and quiz.group == "medicine"
    assert all(len(r.choices) == 4 and r.response in r.choices for r in quiz.records)
    oncology = users["ward-oncology-user"]
    assert oncology.source == "ward-oncology.csv" and oncology.group == "medicine"
    registry = load_dataset(DataSource(example.parent / "registry", split="train")).texts()
    assert set(users["registry-user"].spec_texts()) <= set(registry)  # train split only


def test_a_moved_folder_deals_the_same_and_a_short_file_is_named(example, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(example.parent, moved)
    here = deal(SimulationConfig.from_toml(example))
    there = deal(SimulationConfig.from_toml(moved / "SIM.toml"))
    assert here == there
    (moved / "SIM.toml").write_text(sim_toml().replace("texts = 80", "texts = 1000", 1))
    with pytest.raises(DataError, match=r"text:ward-cardiology.jsonl has 150 items left"):
        deal(SimulationConfig.from_toml(moved / "SIM.toml"))


def test_readme_shows_the_example_sim_toml():
    assert sim_toml() in README.read_text()


def test_the_example_refuses_a_folder_in_use(example):
    with pytest.raises(AlreadyExists, match="not an empty folder"):
        write_example(example.parent)


def test_a_contributor_may_train_on_part_of_a_users_task_file(example, tmp_path):
    """The same file (with the same columns) as a contributor's task and a user's task is
    one pool: what the contributor trains on, the user never holds."""
    sim = tmp_path / "sim.toml"
    quiz = example.parent / "chapter-quiz.jsonl"
    columns = 'prompt_column = "question", response_column = "answer"'  # the user's, as given
    sim.write_text(
        sim_toml().replace('path = "', f'path = "{example.parent}/').replace(
            'name = "ward-oncology"\n',
            f'name = "ward-oncology"\ntasks = [{{ path = "{quiz}", {columns} }}]\n'
            "task_records = 30\n",
        )
    )
    dealt = deal(SimulationConfig.from_toml(sim))
    trained = set(dealt.holders["ward-oncology"][0].records)
    user = next(u for u in dealt.users if u.name == "chapter-quiz")
    assert len(trained) == 30 and not trained & set(user.records)


def _contributors(first: str, second: str = '"math"') -> str:
    return (
        f'profile = "quick"\n[[contributors]]\nname = "a"\nsources = [{first}]\n'
        f'[[contributors]]\nname = "b"\nsources = [{second}]\n'
    )


BAD_CONFIGS = [
    pytest.param(
        _contributors('{ path = "nowhere.jsonl" }'),
        DataError,
        "nowhere.jsonl: no such file",
        id="a missing file",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl", text_column = "body" }'),
        DataError,
        "no column 'body'",
        id="a column the file lacks",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl", split = "test" }'),
        DataError,
        "one table without splits",
        id="a split of a file",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl", colour = "red" }'),
        InvalidInput,
        "unknown keys ['colour']",
        id="an unknown key",
    ),
    pytest.param(_contributors('{ split = "train" }'), InvalidInput, "needs a path", id="no path"),
    pytest.param(
        _contributors("{ path = 3 }"), InvalidInput, "path must be a non-blank string", id="path 3"
    ),
    pytest.param(
        _contributors('"notes.jsonl"'), InvalidInput, "unknown source 'notes.jsonl'", id="bare"
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl" }').replace(
            'sources = [{ path = "notes.jsonl" }]', 'sources = { path = "notes.jsonl" }'
        ),
        InvalidInput,
        "sources must be a list",
        id="sources a table",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl" }')
        + '[[tasks]]\nname = "quiz"\nright = ["a"]\ndata = { path = "bad-quiz.jsonl" }\n',
        DataError,
        "neither one of the 3 choices nor an index",
        id="a gold answer outside the choices",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl" }')
        + '[[tasks]]\nname = "quiz"\nright = ["a"]\ndata = { path = "quiz.csv" }\n',
        DataError,
        "a CSV cell holds no list",
        id="choices in a CSV",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl" }')
        + '[[tasks]]\nname = "quiz"\nright = ["a"]\ndata = "notes.jsonl"\n',
        InvalidInput,
        "a file is a table like",
        id="data a string",
    ),
    pytest.param(
        _contributors('{ path = "notes.jsonl" }')
        + '[[tasks]]\nname = "Quiz Two"\nright = ["a"]\ndata = { path = "notes.jsonl" }\n',
        InvalidInput,
        "a task user's name",
        id="a task user's name with spaces",
    ),
]


@pytest.mark.parametrize(("text", "error", "message"), BAD_CONFIGS)
def test_bad_files_are_one_error_when_the_config_is_read(tmp_path, text, error, message):
    (tmp_path / "notes.jsonl").write_text('{"text": "a ward note about a patient"}\n')
    (tmp_path / "bad-quiz.jsonl").write_text(
        json.dumps({"question": "q?", "choices": ["x", "y", "z"], "answer": 3}) + "\n"
    )
    (tmp_path / "quiz.csv").write_text('question,choices,answer\nq?,"[""x"", ""y""]",0\n')
    sim = tmp_path / "sim.toml"
    sim.write_text(text)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(")) as raised:
        SimulationConfig.from_toml(sim)
    assert "\n" not in str(raised.value)
    assert type(raised.value) is error  # its exit code: 3 for data, 2 for the config


# ---------------------------------------------------------------- multiple choice


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("answers", [(1, 0), ("blood", "grass")], ids=["index", "option"])
def test_multiple_choice_records_read_from_a_file(tmp_path, suffix, answers):
    import datasets

    rows = [
        {"question": "Which is red?", "choices": ["sky", "blood"], "answer": answers[0]},
        {"question": "Which is green?", "choices": ["grass", "snow", "coal"], "answer": answers[1]},
    ]
    path = tmp_path / f"quiz{suffix}"
    table = datasets.Dataset.from_list(rows)
    if suffix == ".jsonl":
        table.to_json(path, lines=True)
    else:
        table.to_parquet(path)
    assert load_dataset(path).records == (
        Record(prompt="Which is red?", response="blood", choices=("sky", "blood")),
        Record(prompt="Which is green?", response="grass", choices=("grass", "snow", "coal")),
    )


def test_candidates_are_a_records_choices_else_the_closed_label_set():
    closed = [Record(prompt="p", response="b"), Record(prompt="q", response="a")]
    assert candidates(closed, max_labels=8) == [("a", "b"), ("a", "b")]
    assert candidates(closed, max_labels=1) is None
    mcq = [Record(prompt="p", response="y", choices=("x", "y", "z"))]
    assert candidates(mcq, max_labels=3) == [("x", "y", "z")]
    assert candidates(mcq, max_labels=2) is None


def test_acc_norm_divides_by_the_choices_length_as_lm_eval_does():
    picked = predict([-6.0, -10.0], ["ab", "abcdefgh"])
    assert picked.acc == 0  # -6 > -10
    assert picked.acc_norm == 1  # -10 / 8 > -6 / 2
    assert predict([-1.0, -1.0], ["a", "b"]).acc == 0  # ties go to the first, as argmax does
    # characters, not bytes: -3 / 1 < -2 / 1 (by bytes "é" would win, -3 / 2 > -2 / 1)
    assert predict([-3.0, -2.0], ["é", "a"]).acc_norm == 1
    with pytest.raises(DataError):
        predict([-1.0], ["a", "b"])


# ---------------------------------------------------------------- the whole run


@pytest.fixture(scope="module")
def run(example, lwm_home, tmp_path_factory):
    """The example consortium made small (~30 s on 2 idle cores): three learnwares (the
    registry's folder joins the cardiology ward, the maths corpus the bank), one spec kind,
    no sweep, few texts and steps."""
    from client.simulate.run import simulate
    from shared.cli_options import console

    config = SimulationConfig.from_toml(example)
    cardiology, oncology, bank, registry, tutor = config.contributors
    config = config.with_overrides(
        spec_kinds=("rkme",),
        spec_epsilon=16.0,  # an RKME spec of 32 texts (at epsilon 4 its DP count wants 49)
        sweep_epsilons=(4.0,),
        training=replace(config.training, steps=2),
        users=Users(texts=12, task_records=12, eval_records=6, eval_words=48),
        contributors=(
            replace(cardiology, sources=cardiology.sources + registry.sources, texts=32),
            replace(oncology, texts=32),
            replace(bank, sources=bank.sources + tutor.sources, texts=32),
        ),
    )
    out = tmp_path_factory.mktemp("simulate-files") / "run"
    quiet = console()
    quiet.file = io.StringIO()
    results = simulate(config, out, quiet, lwm_home)
    return config, out, results


def test_a_simulation_runs_on_the_consortiums_files(run):
    config, out, results = run
    assert [x["contributor"] for x in results["learnwares"]] == [
        c.name for c in config.contributors
    ]
    assert all(x["status"] == "USABLE" for x in results["learnwares"])
    sources = {u["name"]: u["source"] for u in results["users"]}
    assert sources == {
        "ward-cardiology-user": "ward-cardiology.jsonl+registry[train]",
        "ward-oncology-user": "ward-oncology.csv",
        "bank-user": "bank-ledger.parquet+math",
        "chapter-quiz": "chapter-quiz.jsonl",
    }
    report = (out / "report.md").read_text()
    assert "## Accuracy per domain, labelled tasks" in report
    assert "Checked (rkme)" in report and "Merged top-k (rkme)" in report
    names = {"base", "merged", *(c.name for c in config.contributors)}
    assert {r["rkme"]["pick"] for r in results["reused"].values()} <= names
    assert set(results["reused"]) == set(sources)
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_is_the_papers_on_the_same_models(run, lwm_home):
    """acc and acc_norm of the quiz user, recomputed here for the base model and every
    learnware: plain transformers + peft, one unpadded sequence per choice."""
    config, out, results = run
    user = next(u for u in deal(config).users if u.name == "chapter-quiz")
    recorded = {s["model"]: s for s in results["scores"] if s["user"] == user.name}
    base, tokenizer = _plain_base(lwm_home)
    expected = {"base": _accuracy(base, tokenizer, user.eval_records(), config)}
    for x in results["learnwares"]:
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(base, out / "cache" / "fetched" / x["id"]).eval()
        expected[x["contributor"]] = _accuracy(adapted, tokenizer, user.eval_records(), config)
        base = adapted.unload()
    for model, (acc, acc_norm) in expected.items():
        assert recorded[model]["accuracy"] == pytest.approx(acc), model
        assert recorded[model]["accuracy_norm"] == pytest.approx(acc_norm), model
    row = next(r for r in results["contenders"] if r["user"] == user.name)
    learnwares = [x["contributor"] for x in results["learnwares"]]
    assert row["accuracy"]["acc"]["base"] == pytest.approx(expected["base"][0])
    assert row["accuracy"]["acc"]["oracle"] == pytest.approx(
        max(expected[m][0] for m in learnwares)
    )
    assert row["accuracy"]["acc_norm"]["random"] == pytest.approx(
        sum(expected[m][1] for m in learnwares) / len(learnwares)
    )
    pick = row["picks"]["rkme"]
    assert row["accuracy"]["acc"]["learnware"]["rkme"] == pytest.approx(expected[pick][0])
    table = {(r["group"], r["metric"]): r for r in results["accuracy_table"]}
    assert table[("medicine", "acc")]["users"] == 1
    line = next(
        x
        for x in (out / "report.md").read_text().splitlines()
        if x.startswith("| medicine | acc |")
    )
    assert f"| {100 * expected['base'][0]:.2f} |" in line


def _plain_base(home):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models.causal import builtin_folder

    folder = builtin_folder("tiny", home)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder
    )


def _accuracy(model, tokenizer, records, config) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """lm-eval's multiple choice written out: context = the question's last ``eval_words``
    words and a newline, each choice's summed log-probability; acc_norm divides by len()."""
    import torch

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    hits = hits_norm = 0
    for record in records:
        question = " ".join(record.prompt.split()[-config.users.eval_words :])
        context = encode(question + "\n")
        scores = []
        for choice in record.choices:
            target = encode(choice)
            ids = torch.tensor([context + target])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            positions = range(len(context) - 1, len(context) + len(target) - 1)
            scores.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
        gold = record.choices.index(record.response)
        best = max(range(len(scores)), key=lambda i: scores[i])
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(record.choices[i]))
        hits += best == gold
        hits_norm += best_norm == gold
    return hits / len(records), hits_norm / len(records)
