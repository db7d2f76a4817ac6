"""Chat SFT masking: on a rendered conversation, the labelled tokens decode to exactly the
assistant replies and their end-of-turn token; bad messages are one-line errors."""

import json
from pathlib import Path

import pytest
import transformers
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmlab.errors import LmlabError
from lmlab.objectives import IGNORE_INDEX
from lmlab.objectives.chat_sft import chat_example
from lmlab.tokenizers import CharTokenizer, load_pretrained_tokenizer

EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "shakespeare_excerpt.txt"
SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|im_start|>", "<|im_end|>"]
TEMPLATES = {
    # Zephyr-like: the end-of-turn token is eos, followed by a newline the reply does not include.
    "eos-newline": (
        "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
        "</s>",
    ),
    # ChatML (Qwen, many others): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>",
    ),
}
MESSAGES = [
    {"role": "system", "content": "Answer as a poet."},
    {"role": "user", "content": "What light through yonder window breaks?"},
    {"role": "assistant", "content": "It is the east, and Juliet is the sun."},
    {"role": "user", "content": "And then — café, naïve? 🙂"},
    {"role": "assistant", "content": "Arise, fair sun,\nand kill the envious moon."},
]


@pytest.fixture(scope="module", params=list(TEMPLATES))
def chat_tokenizer(request, tmp_path_factory):
    """A byte-level BPE with a chat template, loaded through lmlab's pretrained-tokenizer reader."""
    directory = tmp_path_factory.mktemp(request.param)
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(EXCERPT.read_text(encoding="utf-8").split("\n"), trainer)
    backend.save(str(directory / "tokenizer.json"))
    template, end_of_turn = TEMPLATES[request.param]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<|endoftext|>", "chat_template": template}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return load_pretrained_tokenizer(directory), end_of_turn, directory


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The maximal runs of consecutive positions that carry a label."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return runs


def test_labels_cover_exactly_the_assistant_replies(chat_tokenizer):
    tokenizer, end_of_turn, directory = chat_tokenizer
    ids, labels = chat_example(tokenizer, MESSAGES)
    assert len(ids) == len(labels)
    replies = [m["content"] + end_of_turn for m in MESSAGES if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in labelled_runs(ids, labels)] == replies
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))  # the independent renderer
    assert tokenizer.decode(ids) == reference.apply_chat_template(MESSAGES, tokenize=False)


def test_a_conversation_ending_with_a_user_turn_keeps_it_unlabelled(chat_tokenizer):
    tokenizer, end_of_turn, _ = chat_tokenizer
    ids, labels = chat_example(tokenizer, MESSAGES[:4])
    assert [tokenizer.decode(run) for run in labelled_runs(ids, labels)] == [MESSAGES[2]["content"] + end_of_turn]
    assert labels[-1] == IGNORE_INDEX


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}, {"content": "hello"}], "message 1 has no 'role'"),
    ([{"role": "user"}, {"role": "assistant", "content": "x"}], "message 0 has no 'content'"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "message 1 has role 'bot'; roles: system, developer, user, assistant, tool"),
    ([{"role": "assistant", "content": 3}], "message 0's content is not a string"),
    (["hello"], "message 0 is not an object"),
    ([], "non-empty list"),
    ([{"role": "user", "content": "hi"}], "no assistant message"),
])
def test_bad_messages_are_one_line_errors(chat_tokenizer, messages, message):
    tokenizer, _, _ = chat_tokenizer
    with pytest.raises(LmlabError, match=message) as info:
        chat_example(tokenizer, messages)
    assert "\n" not in str(info.value)


def test_a_tokenizer_without_a_chat_template_is_refused():
    with pytest.raises(LmlabError, match="CharTokenizer has no chat template"):
        chat_example(CharTokenizer.from_text("abc"), MESSAGES)
