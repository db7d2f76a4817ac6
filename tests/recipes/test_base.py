"""The recipe runner: arms that resume, the report's layout, results.json, and the data source's
offline error. A stand-in recipe whose arms record their calls replaces real training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.recipes import RecipeContext, run_recipe
from lmlab.recipes.base import DataSource, Recipe, RecipeReport, markdown_table, write_report

UNREACHABLE_URL = "http://127.0.0.1:9/recipes/corpus.txt"  # the discard port: refused at once


class StandInRecipe:
    """Two arms ``a`` and ``b``; ``b`` stops part-way (raises) while ``stop_b`` is set, after
    leaving a file in its run directory as a stopped training run leaves checkpoints."""

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []
        self.stop_b = False

    def arm(self, name: str):
        def train(run_dir: Path, resume: bool) -> dict:
            self.calls.append((name, resume))
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "partial").write_text("step 3")
            if name == "b" and self.stop_b:
                raise KeyboardInterrupt
            return {"loss": 1.0 if name == "a" else 2.0}

        return train

    def run(self, context: RecipeContext) -> RecipeReport:
        arms = {name: context.run_arm(name, self.arm(name)) for name in ("a", "b")}
        return RecipeReport(
            title="Stand-in", summary="The summary.", columns=("arm", "loss"),
            rows=[{"arm": name, "loss": r["loss"]} for name, r in arms.items()],
            results={"arms": arms}, sections=[("Samples", "the samples")],
            commands={name: f"lmlab train --out {context.arm_dir(name)}" for name in arms},
        )


@pytest.fixture
def stand_in(monkeypatch) -> StandInRecipe:
    recipe = StandInRecipe()
    declared = Recipe(name="stand-in", description="two recorded arms", arm_seconds={"small": 1, "default": 2,
                      "large": 3}, run=recipe.run)
    monkeypatch.setattr("lmlab.recipes.recipes", lambda: {"stand-in": declared})
    return recipe


def test_resume_skips_finished_arms_and_continues_a_stopped_one(stand_in, tmp_path):
    stand_in.stop_b = True
    with pytest.raises(KeyboardInterrupt):
        run_recipe("stand-in", tmp_path / "out", echo=lambda _: None)
    assert stand_in.calls == [("a", False), ("b", False)]
    stand_in.stop_b = False
    run_recipe("stand-in", tmp_path / "out", resume=True, echo=lambda _: None)
    assert stand_in.calls[2:] == [("b", True)]  # a is read back; b continues where it stopped
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["arms"]["a"]["loss"] == 1.0 and results["arms"]["b"]["loss"] == 2.0
    assert all("wall_s" in arm for arm in results["arms"].values())


def test_a_finished_run_is_not_overwritten_without_resume(stand_in, tmp_path):
    run_recipe("stand-in", tmp_path / "out", echo=lambda _: None)
    with pytest.raises(LmlabError, match="pass --resume"):
        run_recipe("stand-in", tmp_path / "out", echo=lambda _: None)
    run_recipe("stand-in", tmp_path / "out", resume=True, echo=lambda _: None)
    assert [name for name, _ in stand_in.calls] == ["a", "b"]  # the resumed run trained nothing


def test_report_has_the_table_first_then_sections_then_commands(stand_in, tmp_path):
    report = run_recipe("stand-in", tmp_path / "out", budget="small", seed=7, echo=lambda _: None)
    text = report.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Stand-in" and lines[2] == "| arm | loss |"
    assert text.index("| a | 1 |") < text.index("The summary.") < text.index("## Samples")
    assert text.index("## Samples") < text.index("## Reproduce each arm") < text.index("lmlab train --out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["recipe"], results["budget"], results["arm_seconds"], results["seed"]) == ("stand-in", "small", 1, 7)


def test_markdown_table_formats_floats_and_escapes_pipes():
    table = markdown_table(("name", "value"), [{"name": "a|b", "value": 0.123456}, {"name": "c"}])
    assert table.splitlines() == ["| name | value |", "|---|---|", "| a\\|b | 0.1235 |", "| c |  |"]


def test_write_report_lists_figures(tmp_path):
    recipe = Recipe(name="r", description="d", arm_seconds={"default": 1}, run=lambda context: None)
    context = RecipeContext(recipe=recipe, out_dir=tmp_path, arm_seconds=1)
    report = RecipeReport(title="T", summary="S", columns=("x",), rows=[], results={"arms": {}},
                          figures=["curves.png"])
    assert "![curves](curves.png)" in write_report(context, report, 1.0).read_text()


def offline_recipe(tmp_path, monkeypatch) -> Recipe:
    """A recipe whose public source cannot be reached, with an empty download cache."""
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    source = DataSource(description="a corpus", url=UNREACHABLE_URL, sha256="0" * 64, filename="corpus.txt",
                        local_format="a UTF-8 text file")
    return Recipe(name="offline", description="d", arm_seconds={"default": 1}, run=lambda context: None, source=source)


def test_offline_without_data_names_the_url_and_the_flag(tmp_path, monkeypatch):
    recipe = offline_recipe(tmp_path, monkeypatch)
    context = RecipeContext(recipe=recipe, out_dir=tmp_path / "out", arm_seconds=1)
    with pytest.raises(LmlabError) as error:
        context.data_path()
    message = str(error.value)
    assert UNREACHABLE_URL in message and "--data PATH" in message and "a UTF-8 text file" in message
    assert "\n" not in message


def test_missing_data_path_is_one_line(tmp_path):
    recipe = Recipe(name="r", description="d", arm_seconds={"default": 1}, run=lambda context: None)
    context = RecipeContext(recipe=recipe, out_dir=tmp_path, arm_seconds=1, data=tmp_path / "absent.txt")
    with pytest.raises(LmlabError, match="no such file"):
        context.data_path()


def test_unknown_budget_and_non_positive_time_are_errors(stand_in, tmp_path):
    with pytest.raises(LmlabError, match="unknown budget"):
        run_recipe("stand-in", tmp_path / "out", budget="huge")
    with pytest.raises(LmlabError, match="must be positive"):
        run_recipe("stand-in", tmp_path / "out", max_time=0)


def test_the_announcing_line_says_what_an_arm_does(tmp_path):
    recipe = Recipe(name="r", description="d", arm_seconds={"default": 5}, run=lambda context: None)
    lines: list[str] = []
    context = RecipeContext(recipe=recipe, out_dir=tmp_path, arm_seconds=5, echo=lines.append)
    context.run_arm("trained", lambda run_dir, resume: {})
    context.run_arm("lead-3", lambda run_dir, resume: {}, doing="taking each article's first three sentences")
    assert lines[0].startswith("trained: training for 5 s in ")
    assert lines[1].startswith("lead-3: taking each article's first three sentences in ")
    assert "training" not in lines[1]


def test_offline_without_data_creates_no_output_directory(tmp_path, monkeypatch):
    declared = offline_recipe(tmp_path, monkeypatch)
    monkeypatch.setattr("lmlab.recipes.recipes", lambda: {"offline": declared})
    with pytest.raises(LmlabError, match="--data PATH"):
        run_recipe("offline", tmp_path / "out", echo=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_val_is_rejected_in_one_line_by_a_recipe_without_it(stand_in, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("text")
    with pytest.raises(LmlabError) as error:
        run_recipe("stand-in", tmp_path / "out", data=data, val=data, echo=lambda _: None)
    assert "takes no --val" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
