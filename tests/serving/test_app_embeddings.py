"""``/v1/embeddings`` for a sentence-transformers encoder: the vectors are what ``transformers``'
BERT gives, mean-pooled over the real tokens and normalised; a decoder-only route is refused."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import torch  # noqa: E402
from serving_helpers import HANG_GUARD_S  # noqa: E402

transformers = pytest.importorskip("transformers")

from tiny_models import sentence_encoder_dir  # noqa: E402

from lmlab.cli.serve import embedder_for  # noqa: E402
from lmlab.serving.app import create_app  # noqa: E402
from lmlab.serving.server import BackgroundServer  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402

TEXTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return sentence_encoder_dir(tmp_path_factory.mktemp("encoder"))


def _reference(folder, texts: list[str]) -> torch.Tensor:
    """Mean pooling over the attention mask of transformers' BertModel, then unit length."""
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    model = transformers.BertModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (N, T, C)
    mask = batch["attention_mask"][:, :, None].float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_embeddings_are_transformers_mean_pooled_vectors(encoder_dir):
    run = load_run(encoder_dir, print)
    app = create_app(run.model, run.tokenizer, None, model_name="encoder", embedder=embedder_for(str(encoder_dir)))
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=HANG_GUARD_S) as http:
        body = http.post("/v1/embeddings", json={"model": "encoder", "input": TEXTS}).json()
        one = http.post("/v1/embeddings", json={"input": TEXTS[0]}).json()
        refused = http.post("/v1/completions", json={"prompt": "w1"})
        bad = http.post("/v1/embeddings", json={"input": []})
    vectors = torch.tensor([row["embedding"] for row in body["data"]])
    torch.testing.assert_close(vectors, _reference(encoder_dir, TEXTS), atol=1e-5, rtol=1e-4)
    assert [row["index"] for row in body["data"]] == [0, 1, 2] and body["usage"]["prompt_tokens"] > 0
    assert one["data"][0]["embedding"] == pytest.approx(body["data"][0]["embedding"], abs=1e-6)
    assert refused.status_code == 400 and "encoder" in refused.json()["error"]["message"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
