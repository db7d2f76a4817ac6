"""``lmlab attention --png``: a grid of heat maps, one row per layer of each stack (encoder,
decoder, cross), one column per head, 160 px a map plus a 60 px margin."""

import pytest

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from attention_models import bart_dir, gpt2_dir, make_view  # noqa: E402


def test_encoder_decoder_grid_has_a_row_per_layer_of_each_stack(tmp_path):
    png = tmp_path / "grid.png"
    data = make_view(bart_dir(tmp_path / "bart"), tmp_path / "view.html", "--text", "w1 w2 w3", "--text-b", "w4",
                     "--png", str(png))
    assert [stack["name"] for stack in data["stacks"]] == ["encoder", "decoder", "cross"]
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (60 + 160 * 2, 60 + 160 * 3 * 2)  # 2 heads; 3 stacks × 2 layers
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


def test_chosen_layers_and_heads_size_the_grid(tmp_path):
    png = tmp_path / "grid.png"
    make_view(gpt2_dir(tmp_path / "gpt2"), tmp_path / "view.html", "--text", "w1 w2 w3", "--layers", "1",
              "--heads", "0", "--png", str(png))
    with Image.open(png) as image:
        assert image.size == (60 + 160, 60 + 160)
