"""Encoder-only Transformer: bidirectional attention, padding, permutation equivariance, the MLM and
classification heads, and MLM training with the Trainer."""

import copy

import pytest
import torch

from lmlab.models import EncoderClassifier, EncoderMLM, ModelConfig, build_model
from lmlab.models.config import POSITIONS
from lmlab.objectives import mlm_batch, token_cross_entropy
from lmlab.training.config import RunConfig, TrainConfig
from lmlab.training.trainer import Trainer

V, PAD, MASK = 24, 0, 1


def tiny(**overrides) -> ModelConfig:
    fields = dict(backbone="encoder", vocab_size=V, n_layer=2, n_head=4, n_kv_heads=2, d_model=32,
                  context_length=16, dropout=0.0)
    fields.update(overrides)
    torch.manual_seed(0)
    return ModelConfig(**fields)


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_mlm_head_logits_and_tied_decoder():
    model = build_model(tiny())
    assert isinstance(model, EncoderMLM)
    assert model(ids(3, 10)).shape == (3, 10, V)
    assert model.mlm_head.decoder.weight is model.backbone.tok_emb.weight


@pytest.mark.parametrize("position", POSITIONS)
def test_every_position_sees_every_other(position):
    model = build_model(tiny(position=position))
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["x"] = output

    model.backbone.tok_emb.register_forward_hook(keep)
    model(ids(1, 8))[:, 2].sum().backward()
    assert torch.all(captured["x"].grad.abs().sum(-1)[0] > 0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_padding_leaves_the_real_tokens_unchanged(position, placement):
    model = build_model(tiny(position=position, norm_placement=placement)).eval()
    lengths = [8, 5, 3]
    batch = ids(3, 8)
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(batch.masked_fill(~mask, PAD), attention_mask=mask)
        for row, n in enumerate(lengths):
            torch.testing.assert_close(padded[row, :n], model(batch[row : row + 1, :n])[0], atol=1e-5, rtol=1e-4)


def test_without_positions_the_encoder_is_permutation_equivariant():
    model = build_model(tiny(position="none", norm_placement="post")).eval()
    tokens = ids(2, 9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(tokens, attention_mask=mask)
        permuted = model(tokens[:, perm], attention_mask=mask[:, perm])
    torch.testing.assert_close(permuted, out[:, perm], atol=1e-5, rtol=1e-4)


def test_positions_break_permutation_equivariance():
    model = build_model(tiny(position="learned")).eval()
    tokens = ids(1, 6)
    with torch.no_grad():
        assert not torch.allclose(model(tokens.flip(1)), model(tokens).flip(1), atol=1e-4)


# ----------------------------------------------------------------------------- classification
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_pools_then_projects(pooling):
    model = build_model(tiny(head="classifier", num_labels=3, pooling=pooling)).eval()
    assert isinstance(model, EncoderClassifier)
    tokens = ids(2, 7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)
        hidden = model.backbone(tokens, mask)
        pooled = hidden[:, 0] if pooling == "cls" else torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)])
        torch.testing.assert_close(logits, model.classifier.classifier(pooled))
        torch.testing.assert_close(logits[1], model(tokens[1:, :4])[0], atol=1e-5, rtol=1e-4)  # padding-invariant
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("pooling", ["cls", "cls-dense-tanh"])
def test_classifier_runs_the_last_feed_forward_on_the_first_token_alone(placement, pooling):
    model = build_model(tiny(head="classifier", num_labels=3, pooling=pooling, norm_placement=placement)).train()
    tokens, mask = ids(3, 9), torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7], dtype=torch.bool)
    reference = copy.deepcopy(model)
    full = reference.classifier(reference.backbone(tokens, mask), mask)  # every position through every block
    sliced = model(tokens, attention_mask=mask)
    torch.testing.assert_close(sliced, full, atol=1e-6, rtol=1e-5)
    full.square().sum().backward()
    sliced.square().sum().backward()
    for (name, param), twin in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, twin.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_backbone_positions_return_those_rows_only():
    model = build_model(tiny(head="classifier")).eval()
    tokens = ids(2, 7)
    with torch.no_grad():
        full = model.backbone(tokens)
        torch.testing.assert_close(model.backbone(tokens, positions=slice(2, 5)), full[:, 2:5])


def test_classifier_backbone_loads_an_mlm_backbone():
    mlm = build_model(tiny())
    classifier = build_model(tiny(head="classifier"))
    missing, unexpected = classifier.load_state_dict(mlm.state_dict(), strict=False)
    assert all(k.startswith("classifier.") for k in missing)
    assert all(k.startswith("mlm_head.") for k in unexpected)


# ----------------------------------------------------------------------------- training
class MLMTask:
    """Masked-LM on periodic sequences (each token predictable from its neighbours)."""

    tokens_per_batch = 16 * 12

    def _windows(self, generator):
        start = torch.randint(0, 6, (16, 1), generator=generator)
        return 2 + (start + torch.arange(12)) % 6  # (16, 12) ids 2..7, period 6

    def train_batch(self, generator):
        return mlm_batch(self._windows(generator), generator, mask_id=MASK, pad_id=PAD, vocab_size=V,
                         special_ids=[PAD, MASK])

    def loss(self, model, batch):
        return token_cross_entropy(model(batch.input_ids, attention_mask=batch.attention_mask), batch)

    @torch.no_grad()
    def evaluate(self, model, num_batches, seed):
        generator = torch.Generator().manual_seed(seed)
        losses = [self.loss(model, self.train_batch(generator)).item() for _ in range(num_batches)]
        return {"loss": sum(losses) / len(losses)}


def test_mlm_encoder_trains(tmp_path):
    train = TrainConfig(lr=3e-3, warmup_steps=5, max_steps=150, eval_every=150, eval_batches=4, checkpoint_every=150)
    config = RunConfig(model=tiny(position="rope"), train=train)
    model = build_model(config.model)
    task = MLMTask()
    before = task.evaluate(model, 4, seed=0)["loss"]
    result = Trainer(config, model, task, tmp_path / "run", progress=False, echo=lambda m: None).fit()
    assert result.last_eval["loss"] < 0.5 * before
