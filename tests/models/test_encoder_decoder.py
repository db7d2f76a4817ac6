"""Encoder-decoder Transformer: cross-attention with encoder padding, cached decoding for every
position type, causality, shared or separate embeddings, and training on a copy task."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.models import EncoderDecoderLM, ModelConfig, build_model, count_parameters
from lmlab.models.config import POSITIONS
from lmlab.training.config import RunConfig, TrainConfig
from lmlab.training.trainer import Trainer

V, PAD, BOS = 20, 0, 1


def tiny(**overrides) -> ModelConfig:
    fields = dict(backbone="encoder-decoder", vocab_size=V, n_layer=2, n_head=4, n_kv_heads=2, d_model=32,
                  context_length=16, dropout=0.0)
    fields.update(overrides)
    torch.manual_seed(0)
    return ModelConfig(**fields)


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def model_with(**overrides) -> EncoderDecoderLM:
    model = build_model(tiny(**overrides)).eval()
    if overrides.get("position") == "t5":  # a relative bias large enough to matter
        for stack in (model.encoder, model.decoder):
            torch.nn.init.normal_(stack.pos_emb.relative_bias.weight, std=1.0)
    return model


ENCODER_PADDING = torch.tensor([[1] * 9, [1] * 6 + [0] * 3], dtype=torch.bool)


def test_shapes_tied_head_and_shared_or_separate_embeddings():
    shared = build_model(tiny())
    assert isinstance(shared, EncoderDecoderLM)
    assert shared(ids(2, 9), ids(2, 5)).shape == (2, 5, V)
    assert shared.encoder.tok_emb is shared.decoder.tok_emb
    assert shared.lm_head.weight is shared.decoder.tok_emb.weight
    separate = build_model(tiny(share_embeddings=False))
    assert separate.encoder.tok_emb is not separate.decoder.tok_emb
    assert count_parameters(separate) - count_parameters(shared) == V * 32


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_cached_decoding_equals_teacher_forcing(position, placement):
    model = model_with(position=position, norm_placement=placement)
    source, target = ids(2, 9), ids(2, 8, seed=1)
    with torch.no_grad():
        full = model(source, target, attention_mask=ENCODER_PADDING)
        memory = model.encode(source, ENCODER_PADDING)
        cache = model.new_cache(2, 16)
        steps = [model.decode(target[:, :3], memory, ENCODER_PADDING, cache, 0)]
        steps += [model.decode(target[:, t : t + 1], memory, ENCODER_PADDING, cache, t) for t in range(3, 8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", POSITIONS)
def test_encoder_padding_is_invisible_to_the_decoder(position):
    model = model_with(position=position)
    source, target = ids(2, 9), ids(2, 5, seed=1)
    with torch.no_grad():
        padded = model(source.masked_fill(~ENCODER_PADDING, PAD), target, attention_mask=ENCODER_PADDING)
        alone = model(source[1:, :6], target[1:])
    torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=1e-4)


def test_decoder_padding_mask_leaves_real_targets_unchanged():
    model = model_with(position="rope")
    source, target = ids(2, 9), ids(2, 7, seed=1)
    decoder_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        padded = model(source, target, decoder_attention_mask=decoder_mask)
        alone = model(source[1:], target[1:, :4])
    torch.testing.assert_close(padded[1, :4], alone[0], atol=1e-5, rtol=1e-4)


def test_decoder_is_causal_and_sees_the_whole_source():
    model = model_with(position="t5")
    captured = []

    def keep(module, args, output):
        output.retain_grad()
        captured.append(output)

    model.encoder.tok_emb.register_forward_hook(keep)  # shared: fires for encoder then decoder
    model(ids(1, 6), ids(1, 7, seed=1))[:, 3].sum().backward()
    source_grad, target_grad = (x.grad.abs().sum(-1)[0] for x in captured)
    assert torch.all(source_grad > 0)
    assert torch.all(target_grad[:4] > 0) and torch.all(target_grad[4:] == 0)


# ----------------------------------------------------------------------------- training
class CopyTask:
    """Reproduce a short source sequence over 6 symbols (teacher forcing from BOS); the unigram
    loss is ln 6 ≈ 1.79, so a loss under half the initial ln 20 ≈ 3.0 needs the cross-attention."""

    tokens_per_batch = 16 * 5

    def train_batch(self, generator):
        source = torch.randint(2, 8, (16, 5), generator=generator)
        decoder_input = torch.cat([torch.full((16, 1), BOS), source[:, :-1]], dim=1)
        return source, decoder_input

    def loss(self, model, batch):
        source, decoder_input = batch
        logits = model(source, decoder_input)
        return F.cross_entropy(logits.reshape(-1, V), source.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model, num_batches, seed):
        generator = torch.Generator().manual_seed(seed)
        losses = [self.loss(model, self.train_batch(generator)).item() for _ in range(num_batches)]
        return {"loss": sum(losses) / len(losses)}


def test_encoder_decoder_learns_to_copy(tmp_path):
    train = TrainConfig(lr=3e-3, warmup_steps=5, max_steps=150, eval_every=150, eval_batches=4, checkpoint_every=150)
    config = RunConfig(model=tiny(position="t5", ffn="geglu", norm="rmsnorm"), train=train)
    model = build_model(config.model)
    task = CopyTask()
    before = task.evaluate(model, 4, seed=0)["loss"]
    result = Trainer(config, model, task, tmp_path / "run", progress=False, echo=lambda m: None).fit()
    assert result.last_eval["loss"] < 0.5 * before
