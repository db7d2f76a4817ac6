"""The comparison runner: grids, same-budget runs, tables, the PNG, and parameter counts in info."""

import csv
import json

import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.training.compare import grid_overrides, parse_grid, run_comparison, set_budget, variant_name, write_tables
from lmlab.training.config import RunConfig, apply_overrides

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.context_length=8", "model.dropout=0.0",
        "train.batch_size=4", "train.warmup_steps=2", "train.eval_batches=2", "train.sample_chars=0"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be, that is the question.\n" * 30)
    return path


def test_grid_parsing_products_and_names():
    grid = parse_grid(["model.position=learned,rope", "model.ffn=gelu, swiglu"])
    assert grid == {"model.position": ["learned", "rope"], "model.ffn": ["gelu", "swiglu"]}
    combos = grid_overrides(grid)
    assert len(combos) == 4 and combos[1] == ["model.position=learned", "model.ffn=swiglu"]
    assert variant_name(combos[3]) == "position-rope_ffn-swiglu"
    assert variant_name(["model.moe.num_experts=4"]) == "moe.num_experts-4"


@pytest.mark.parametrize("bad", [["model.position"], ["=a,b"], ["model.position="], ["a=1", "a=2"], []])
def test_bad_grids_are_one_line_errors(bad):
    with pytest.raises(LmlabError):
        parse_grid(bad)


def test_a_bad_value_fails_before_anything_trains(tmp_path, corpus):
    config = apply_overrides(RunConfig(), [f"data.corpus={corpus}", *TINY])
    with pytest.raises(LmlabError, match="learned, sinusoidal"):
        run_comparison(config, {"model.position": ["rope", "xpos"]}, tmp_path / "out", echo=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_same_budget_runs_with_tables_and_long_context_loss(tmp_path, corpus):
    config = apply_overrides(RunConfig(), [f"data.corpus={corpus}", *TINY])
    set_budget(config, max_steps=10)
    assert config.train.eval_every == 1 and config.train.checkpoint_every == 10
    results = run_comparison(config, {"model.position": ["learned", "alibi"]}, tmp_path, echo=lambda m: None)
    assert [r.name for r in results] == ["position-learned", "position-alibi"]
    for r in results:
        assert r.steps == 10 and len(r.curve) == 10 and r.tokens_per_s > 0
        assert r.best_val_loss == min(p["val_loss"] for p in r.curve) and r.final_val_loss == r.curve[-1]["val_loss"]
        assert r.parameters == r.active_parameters
    assert results[0].long_context_val_loss is None and results[1].long_context_val_loss > 0
    assert results[0].parameters - results[1].parameters == 8 * 16  # the learned position table
    md, table = write_tables(results, tmp_path)
    assert "val loss @2×ctx" in md.read_text() and "| position-learned |" in md.read_text()
    rows = list(csv.reader(table.open()))
    assert rows[0][:3] == ["variant", "params", "active params"] and len(rows) == 3 and rows[1][-1] == "—"


def test_cli_compare_writes_table_and_plot_and_info_reports_parameter_counts(tmp_path, corpus, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--data", str(corpus), "--grid", "model.moe.num_experts=0,4", "--max-steps", "4",
                 "--set", *TINY, "model.moe.top_k=1", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| moe.num_experts-4 |" in printed and "@2×ctx" not in printed  # no position grid: no 2× column
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert (out / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["info", str(out / "moe.num_experts-4")]) == 0
    counts = json.loads(capsys.readouterr().out)["model"]["parameter_counts"]
    assert counts["active_per_token"] < counts["total"]


def test_cli_compare_budget_flags_are_exclusive(capsys):
    assert main(["compare", "--grid", "model.ffn=gelu", "--max-steps", "2", "--max-time", "3", "--out", "x"]) == 2
    assert "not allowed with" in capsys.readouterr().err
