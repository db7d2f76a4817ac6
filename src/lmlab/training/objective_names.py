"""The names of the training objectives, kept apart from their registry so that validating a
config (:mod:`lmlab.training.config`) does not import the objectives, data and evaluation code."""

OBJECTIVE_NAMES = ("causal-lm", "prefix-lm", "mlm", "span-corruption", "bart", "ul2")
