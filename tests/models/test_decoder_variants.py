"""Decoder-only Transformer variants: every positional encoding, norm placement, GQA, prefix LM,
padding, MoE; cached decoding, causality, config errors and end-to-end training."""

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, MoEConfig, build_model, parameter_counts
from lmlab.models.config import POSITIONS
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.run import make_trainer

V = 29


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=V, n_layer=2, n_head=4, n_kv_heads=2, d_model=32, context_length=16, dropout=0.0)
    fields.update(overrides)
    torch.manual_seed(0)
    return ModelConfig(**fields)


def decoder(**overrides):
    model = build_model(tiny(**overrides)).eval()
    if overrides.get("position") == "t5":  # a bias large enough to matter
        torch.nn.init.normal_(model.backbone.pos_emb.relative_bias.weight, std=1.0)
    return model


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def embedding_grads(model, tokens, position, **kwargs) -> torch.Tensor:
    """|d logits[:, position] / d embeddings| summed per input position: (T,)."""
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["x"] = output

    handle = model.backbone.tok_emb.register_forward_hook(keep)
    model(tokens, **kwargs)[:, position].sum().backward()
    handle.remove()
    return captured["x"].grad.abs().sum(dim=(0, 2))


VARIANTS = [
    dict(position=p, norm_placement=n) for p in POSITIONS for n in ("pre", "post")
] + [dict(position="rope", rope_fraction=0.5, rope_base=100.0, ffn="swiglu", norm="rmsnorm", n_kv_heads=1)]


def variant_id(v: dict) -> str:
    return "-".join(str(x) for x in v.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_cached_decoding_equals_the_full_pass(variant):
    model = decoder(**variant)
    tokens = ids(2, 12)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 16)
        steps = [model(tokens[:, :5], cache, 0)]
        steps += [model(tokens[:, t : t + 1], cache, t) for t in range(5, 9)]
        steps.append(model(tokens[:, 9:], cache, 9))  # a chunk after single steps
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", POSITIONS)
def test_no_gradient_flows_from_later_positions(position):
    model = decoder(position=position)
    grads = embedding_grads(model, ids(2, 10), position=5)
    assert torch.all(grads[6:] == 0)
    assert torch.all(grads[:6] > 0)


def test_prefix_lm_is_bidirectional_inside_the_prefix_and_causal_after():
    model = decoder(position="rope")
    tokens = ids(1, 10)
    prefix = torch.tensor([4])
    grads = embedding_grads(model, tokens, position=1, prefix_lengths=prefix)
    assert torch.all(grads[:4] > 0) and torch.all(grads[4:] == 0)  # position 1 sees the whole prefix
    model.zero_grad()
    grads = embedding_grads(model, tokens, position=6, prefix_lengths=prefix)
    assert torch.all(grads[:7] > 0) and torch.all(grads[7:] == 0)


def test_prefix_lm_cached_decoding_after_a_prefix_prefill():
    model = decoder(position="alibi")
    tokens, prefix = ids(2, 10), torch.tensor([5, 3])
    with torch.no_grad():
        full = model(tokens, prefix_lengths=prefix)
        cache = model.new_cache(2, 10)
        steps = [model(tokens[:, :5], cache, 0, prefix_lengths=prefix)]
        steps += [model(tokens[:, t : t + 1], cache, t, prefix_lengths=prefix) for t in range(5, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", POSITIONS)
def test_right_padding_leaves_the_real_tokens_unchanged(position):
    model = decoder(position=position)
    lengths = [9, 5, 7]
    batch = ids(3, 9)
    mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(batch.masked_fill(~mask, 0), attention_mask=mask)
        for row, n in enumerate(lengths):
            alone = model(batch[row : row + 1, :n])
            torch.testing.assert_close(padded[row, :n], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("position", ["sinusoidal", "rope", "alibi", "t5", "none"])
def test_relative_and_fixed_encodings_run_past_the_training_context(position):
    model = decoder(position=position)
    with torch.no_grad():
        assert torch.isfinite(model(ids(1, 40))).all()


def test_learned_positions_stop_at_the_context():
    with pytest.raises(ValueError, match="16 positions"):
        decoder()(ids(1, 17))


def test_post_norm_normalises_embeddings_and_block_outputs_not_the_stack_output():
    pre, post = decoder(), decoder(norm_placement="post")
    identity = torch.nn.Identity
    assert isinstance(pre.backbone.emb_norm, identity) and not isinstance(pre.backbone.final_norm, identity)
    assert isinstance(post.backbone.final_norm, identity) and not isinstance(post.backbone.emb_norm, identity)
    hidden = post.backbone(ids(2, 6))
    torch.testing.assert_close(hidden.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)  # last op: a LayerNorm


def test_gqa_shrinks_the_key_value_projection_and_cache():
    mha, mqa = decoder(n_kv_heads=None), decoder(n_kv_heads=1)
    assert mha.backbone.blocks[0].attn.qkv.out_features == 3 * 32
    assert mqa.backbone.blocks[0].attn.qkv.out_features == 32 + 2 * 8
    assert mqa.new_cache(2, 8).layers[0].keys.shape == (2, 1, 8, 8)


# ----------------------------------------------------------------------------- MoE
def test_moe_every_other_layer_with_parameter_counts():
    model = decoder(n_layer=4, moe=MoEConfig(num_experts=4, top_k=1, every=2))
    kinds = [type(b.ffn).__name__ for b in model.backbone.blocks]
    assert kinds == ["FeedForward", "MoEFeedForward", "FeedForward", "MoEFeedForward"]
    counts = parameter_counts(model)
    per_expert = sum(p.numel() for p in model.backbone.blocks[1].ffn.experts[0].parameters())
    assert counts["total"] - counts["active_per_token"] == 2 * 3 * per_expert
    dense = parameter_counts(decoder())
    assert dense["total"] == dense["active_per_token"]


def test_moe_decoder_caches_like_the_full_pass_without_token_dropping():
    model = decoder(moe=MoEConfig(num_experts=4, top_k=2, drop_tokens=False))
    tokens = ids(2, 8)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 8)
        steps = [model(tokens[:, t : t + 1], cache, t) for t in range(8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- config
def test_every_variant_is_a_config_value():
    config = apply_overrides(RunConfig(), [
        "model.position=alibi", "model.ffn=swiglu", "model.norm=rmsnorm", "model.norm_placement=post",
        "model.n_kv_heads=2", "model.moe.num_experts=4", "model.moe.router=expert-choice", "model.moe.every=2",
        "model.rope_base=5e5",
    ])
    assert config.model.moe.num_experts == 4 and config.model.moe.router == "expert-choice"
    assert config.model.rope_base == 500000.0
    assert RunConfig.from_dict(config.to_dict()).model == config.model


@pytest.mark.parametrize(
    "override, listed",
    [
        ("model.position=xpos", "learned, sinusoidal, sinusoidal-halves, rope, alibi, t5, none"),
        ("model.backbone=rnn", "decoder, encoder, encoder-decoder"),
        ("model.norm_placement=sandwich", "pre, post"),
        ("model.ffn=tanh", "relu, gelu, gelu-tanh, selu, silu, swiglu, geglu, reglu"),
        ("model.moe.router=hash", "token-choice, expert-choice"),
    ],
)
def test_a_bad_variant_name_is_a_one_line_error_listing_the_valid_ones(override, listed):
    with pytest.raises(LmlabError, match=listed) as error:
        apply_overrides(RunConfig(), [override])
    assert "\n" not in str(error.value)


def test_impossible_moe_and_rope_settings_are_rejected():
    with pytest.raises(LmlabError, match="top_k"):
        build_model(tiny(moe=MoEConfig(num_experts=2, top_k=3)))
    with pytest.raises(LmlabError, match="rope_fraction"):
        build_model(tiny(position="rope", rope_fraction=0.1))
    with pytest.raises(LmlabError, match="valid"):
        build_model(tiny(backbone="encoder-decoder", head="classifier"))


# ----------------------------------------------------------------------------- training
def tiny_run(tmp_path, *overrides: str):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40)
    config = apply_overrides(RunConfig(), [
        f"data.corpus={corpus}", "model.n_layer=2", "model.n_head=2", "model.d_model=32",
        "model.context_length=16", "model.dropout=0.0", "train.batch_size=8", "train.lr=3e-3",
        "train.warmup_steps=5", "train.max_steps=60", "train.eval_every=30", "train.eval_batches=2",
        "train.checkpoint_every=60", "train.sample_chars=0", *overrides,
    ])
    trainer, _ = make_trainer(config, tmp_path / "run", progress=False, echo=lambda m: None)
    before = trainer.task.evaluate(trainer.model, 2, seed=0)["loss"]
    result = trainer.fit()
    return trainer, before, result.last_eval["loss"]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.position=rope", "model.ffn=swiglu", "model.norm=rmsnorm", "model.n_kv_heads=1"),
        ("model.position=alibi", "model.norm_placement=post"),
    ],
    ids=["llama-like", "alibi-post"],
)
def test_decoder_variants_train(tmp_path, overrides):
    _, before, after = tiny_run(tmp_path, *overrides)
    assert after < 0.6 * before


def test_moe_decoder_trains_and_logs_expert_utilisation(tmp_path):
    trainer, before, after = tiny_run(tmp_path, "model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.every=2")
    assert after < 0.6 * before
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train[-1]["moe_load"]) == 1 and len(train[-1]["moe_load"][0]) == 4
    assert sum(train[-1]["moe_load"][0]) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= train[-1]["moe_dropped"][0] < 1.0
