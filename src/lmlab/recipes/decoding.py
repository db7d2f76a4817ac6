"""Recipe ``decoding`` (NLPwT ch. 5): one model, one prompt, the decoding strategies side by side.

Greedy search, beam search with and without n-gram blocking, sampling at temperatures 0.5 and
2.0, top-k 50 and top-p 0.9 each continue the same prompt. The report shows each text with its
sequence log-probability under the model (the unprocessed distribution, as the chapter scores
them), the greedy top-5 table (the choices at each greedy step) and the next-token distribution
at several temperatures with the top-k and top-p cut-offs marked. Nothing is trained: ``--model``
(default GPT-2 by its Hub id; an lmlab run or a Hugging Face directory locally) is used as it is,
and ``--data`` may name a text file that holds the prompt.
"""

from __future__ import annotations

import shlex
from typing import Any

from lmlab.errors import LmlabError, read_text_file
from lmlab.generation import GenerationConfig, generate
from lmlab.generation.next_token import next_token_distributions, next_token_logits
from lmlab.generation.scoring import format_alternatives, score_continuation, top_alternatives
from lmlab.models.interface import DECODER
from lmlab.recipes.base import Recipe, RecipeContext, RecipeReport
from lmlab.training.run import LoadedRun, load_run
from lmlab.viz.numbers import write_numbers
from lmlab.viz.probability_plots import plot_next_token_figure

DEFAULT_MODEL = "gpt2"
DEFAULT_PROMPT = "Deep in the mountains, the explorers found a quiet valley where"
MAX_NEW_TOKENS = {"small": 24, "default": 64, "large": 128}
BEAMS = 5
NO_REPEAT_NGRAM = 2
ALTERNATIVE_STEPS, ALTERNATIVES = 8, 5
FIGURE = "next_token.png"
FIGURE_TEMPERATURES = [0.5, 1.0, 2.0]
FIGURE_TOP_K, FIGURE_TOP_P, FIGURE_BARS = 50, 0.9, 20

# arm → the generation settings beyond the shared ones (max_new_tokens, eos, seed)
ARMS: dict[str, dict[str, Any]] = {
    "greedy": {"strategy": "greedy"},
    "beam": {"strategy": "beam", "num_beams": BEAMS},
    "beam-no-repeat": {"strategy": "beam", "num_beams": BEAMS, "no_repeat_ngram_size": NO_REPEAT_NGRAM},
    "temperature-0.5": {"strategy": "sample", "temperature": 0.5},
    "temperature-2.0": {"strategy": "sample", "temperature": 2.0},
    "top-k-50": {"strategy": "sample", "top_k": 50},
    "top-p-0.9": {"strategy": "sample", "top_p": 0.9},
}
CLI_FLAGS = {"strategy": "--strategy", "num_beams": "--num-beams", "no_repeat_ngram_size": "--no-repeat-ngram-size",
             "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}


def read_prompt(context: RecipeContext) -> str:
    """The prompt: the text of ``--data`` (its final newline dropped), else :data:`DEFAULT_PROMPT`."""
    if context.data is None:
        return DEFAULT_PROMPT
    prompt = read_text_file(context.data_path(), "write the prompt as UTF-8 text").rstrip("\n")
    if not prompt.strip():
        raise LmlabError(f"--data {context.data} is empty; the decoding recipe reads its prompt from that file")
    return prompt


def load_decoder(name: str, echo) -> LoadedRun:
    """The model every arm decodes with; it must be decoder-only and carry a tokenizer."""
    run = load_run(name, echo)
    if run.model.structure != DECODER:
        raise LmlabError(f"--model {name} is a {run.model.structure} model; the decoding recipe needs a decoder-only "
                         "language model such as GPT-2")
    if run.tokenizer is None:
        raise LmlabError(f"--model {name} has no tokenizer; the decoding recipe needs one to read the prompt")
    return run


def arm_config(arm: str, max_new_tokens: int, eos_ids: tuple[int, ...], seed: int) -> GenerationConfig:
    """The generation settings of ``arm`` (sampling arms seeded with the recipe's seed)."""
    settings = ARMS[arm]
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                            seed=seed if settings["strategy"] == "sample" else None, **settings)


def decode_arm(run: LoadedRun, prompt_ids: list[int], config: GenerationConfig) -> dict[str, Any]:
    """Continue the prompt with ``config``: the continuation's text and tokens, the whole text
    (prompt and continuation decoded together), and the continuation's log-probability under the
    model (natural log; mean per token and perplexity too)."""
    new_ids = generate(run.model, prompt_ids, config)
    result: dict[str, Any] = {"text": run.tokenizer.decode(new_ids), "full_text": run.tokenizer.decode(prompt_ids + new_ids),
                              "new_ids": new_ids, "new_tokens": len(new_ids)}
    if new_ids:
        score = score_continuation(run.model, prompt_ids, new_ids)
        result |= {"logprob": score.logprob, "mean_logprob": score.logprob / len(new_ids),
                   "perplexity": score.perplexity}
    else:
        result |= {"logprob": None, "mean_logprob": None, "perplexity": None}
    return result


def draw_next_token_figure(context: RecipeContext, run: LoadedRun, prompt: str, prompt_ids: list[int]) -> dict[str, Any]:
    """The next-token figure of the prompt (``next_token.png`` and its ``.json``); returns its numbers."""
    report = next_token_distributions(next_token_logits(run.model, prompt_ids), FIGURE_TEMPERATURES,
                                      FIGURE_TOP_K, FIGURE_TOP_P)
    numbers = report.figure_numbers(run.tokenizer.decode, FIGURE_BARS)
    picture = context.out_dir / FIGURE
    plot_next_token_figure(numbers["temperatures"], numbers["cumulative"], prompt, picture)
    write_numbers({"prompt": prompt, **numbers}, picture)
    return numbers


def reproduce_command(model: str, prompt: str, config: GenerationConfig) -> str:
    """The ``lmlab generate`` line that decodes the same way."""
    words = ["lmlab", "generate", model, "--prompt", prompt, "--max-new-tokens", str(config.max_new_tokens), "--score",
             "--strategy", config.strategy]  # the command's own default strategy is sampling
    for field, flag in CLI_FLAGS.items():
        value = getattr(config, field)
        if field != "strategy" and value != getattr(GenerationConfig, field) and value is not None:
            words += [flag, str(value)]
    if config.seed is not None:
        words += ["--seed", str(config.seed)]
    return " ".join(shlex.quote(word) for word in words)


def run(context: RecipeContext) -> RecipeReport:
    prompt = read_prompt(context)
    model_name = context.model or DEFAULT_MODEL
    loaded = load_decoder(model_name, context.echo)
    prompt_ids = loaded.tokenizer.encode(prompt)
    if not prompt_ids:
        raise LmlabError("the prompt encodes to no tokens; give the decoding recipe a prompt with text in it")
    eos = loaded.tokenizer.special_tokens.get("eos")
    max_new_tokens = MAX_NEW_TOKENS.get(context.budget, MAX_NEW_TOKENS["default"])
    configs = {arm: arm_config(arm, max_new_tokens, () if eos is None else (eos,), context.seed) for arm in ARMS}
    arms = {arm: context.run_arm(arm, lambda directory, resume, c=config: decode_arm(loaded, prompt_ids, c),
                                 doing=f"decoding {max_new_tokens} tokens with {model_name} (no training)")
            for arm, config in configs.items()}
    rows = [{"arm": arm, "new tokens": r["new_tokens"], "log-probability": r["logprob"],
             "per token": r["mean_logprob"], "perplexity": r["perplexity"]} for arm, r in arms.items()]
    table = top_alternatives(loaded.model, prompt_ids, ALTERNATIVE_STEPS, ALTERNATIVES)
    figure = draw_next_token_figure(context, loaded, prompt, prompt_ids)
    texts = "\n\n".join(f"**{arm}**\n\n```text\n{r['full_text']}\n```" for arm, r in arms.items())
    alternatives = [{"context": row.context, "choices": [{"id": t, "token": loaded.tokenizer.decode([t]), "prob": p}
                                                          for t, p in row.choices]} for row in table]
    commands = {arm: reproduce_command(model_name, prompt, config) for arm, config in configs.items()}
    best = max((arm for arm in arms if arms[arm]["logprob"] is not None), key=lambda a: arms[a]["mean_logprob"],
               default=None)
    return RecipeReport(
        title=f"Decoding strategies on {model_name}",
        summary=(f"Each arm continues the prompt {prompt!r} by up to {max_new_tokens} tokens; the log-probability "
                 f"is the model's own (natural log, before any temperature or filtering). Highest per-token "
                 f"log-probability: {best}. Nothing is trained in this recipe."),
        columns=["arm", "new tokens", "log-probability", "per token", "perplexity"],
        rows=rows,
        results={"model": model_name, "prompt": prompt, "prompt_ids": prompt_ids, "max_new_tokens": max_new_tokens,
                 "arms": arms, "greedy_alternatives": alternatives, "next_token": figure,
                 "commands": commands},
        sections=[("Texts", texts),
                  (f"Greedy search, the top {ALTERNATIVES} choices at each step",
                   format_alternatives(table, loaded.tokenizer.decode))],
        commands=commands,
        figures=[FIGURE],
    )


RECIPE = Recipe(
    name="decoding",
    description="greedy, beam (± n-gram blocking), temperature, top-k and top-p on one prompt: texts, "
                "log-probabilities, the greedy top-5 table, the next-token figure",
    arm_seconds={"small": 1.0, "default": 1.0, "large": 1.0},  # nominal: the arms decode, they do not train
    run=run,
)
