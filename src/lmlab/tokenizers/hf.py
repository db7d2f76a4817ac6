"""Any Hugging Face ``tokenizers`` tokenizer behind lmlab's interface.

:class:`HFTokenizer` wraps a ``tokenizers.Tokenizer`` — byte-level BPE, WordPiece, or any
pretrained ``tokenizer.json`` — and adds the one thing that library does not store: which special
token plays which role (``pad``, ``bos``, ``eos``, ``unk``, ``mask``, ``cls``, ``sep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Container, Mapping, Sequence

from tokenizers import Tokenizer as HFBackend

from lmlab.errors import LmlabError, read_json_file
from lmlab.tokenizers.base import Tokenizer, register_tokenizer

HF_TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# For each role, the usual token strings in the order they are tried.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "[CLS]", "<|endoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]"),
    "unk": ("<unk>", "[UNK]"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
}


def infer_roles(tokens: Container[str]) -> dict[str, str]:
    """Role → token for every role whose usual token string (see ``ROLE_CANDIDATES``) is present."""
    roles = {}
    for role, candidates in ROLE_CANDIDATES.items():
        found = next((token for token in candidates if token in tokens), None)
        if found is not None:
            roles[role] = found
    return roles


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (the ``tokenizers`` library's can be long)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _roles_from_special_tokens_map(directory: Path) -> dict[str, str] | None:
    """Roles from a ``transformers`` ``special_tokens_map.json`` in ``directory``, if there is one."""
    path = directory / SPECIAL_TOKENS_MAP_FILE
    if not path.is_file():
        return None
    stored = read_json_file(path, "fix or delete it", dict)
    roles = {}
    for key, value in stored.items():
        content = value.get("content") if isinstance(value, dict) else value
        if key.endswith("_token") and isinstance(content, str):
            roles[key.removesuffix("_token")] = content
    return roles


@register_tokenizer("hf")
class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` plus its special-token roles.

    ``roles`` maps a role name to a token string; when omitted it is inferred from the usual
    token strings (:func:`infer_roles`). Encoding adds no special tokens unless asked to, and
    neither pads nor truncates: the padding and truncation a ``tokenizer.json`` may carry are
    switched off on ``backend`` (as ``transformers`` does for a call without ``padding`` or
    ``truncation``); whoever batches texts pads them, with an attention mask.
    """

    def __init__(self, backend: HFBackend, roles: Mapping[str, str] | None = None):
        vocab = backend.get_vocab(with_added_tokens=True)
        if not vocab:
            raise LmlabError("the Hugging Face tokenizer has an empty vocabulary; train or load one")
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.roles = dict(infer_roles(vocab) if roles is None else roles)
        missing = {role: token for role, token in self.roles.items() if token not in vocab}
        if missing:
            raise LmlabError(
                f"special tokens {missing} are not in the tokenizer's vocabulary; "
                "add them to the tokenizer or fix the roles"
            )
        self._special = {role: vocab[token] for role, token in self.roles.items()}
        self._vocab_size = max(vocab.values()) + 1

    @classmethod
    def from_file(cls, path: str | Path, roles: Mapping[str, str] | None = None) -> "HFTokenizer":
        """Load a ``tokenizer.json`` (the file, or a directory holding it).

        Without ``roles``, they come from a ``special_tokens_map.json`` next to the file when
        there is one, else from the usual token strings.
        """
        file = Path(path)
        if file.is_dir():
            file = file / HF_TOKENIZER_FILE
        if not file.is_file():
            raise LmlabError(
                f"no Hugging Face tokenizer at {path}: expected a {HF_TOKENIZER_FILE} file "
                "or a directory holding one"
            )
        try:
            backend = HFBackend.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception for malformed files
            raise LmlabError(
                f"{file} is not a valid Hugging Face tokenizer file ({first_line(exc)})"
            ) from exc
        if roles is None:
            roles = _roles_from_special_tokens_map(file.parent)
        return cls(backend, roles)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text → ids; ``add_special_tokens`` applies the tokenizer's post-processor template."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Encode several texts at once with the library's parallel batch encoder."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode_visible(self, ids: Sequence[int]) -> str:
        """Ids → text without the special tokens (the tokenizer's own ``skip_special_tokens``)."""
        return self.decode(ids, skip_special_tokens=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids → text, keeping special tokens unless ``skip_special_tokens``."""
        ids = self._checked(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(
        self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        """Decode several id sequences at once."""
        checked = [self._checked(ids) for ids in batch]
        return self.backend.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def _checked(self, ids: Sequence[int]) -> list[int]:
        """``ids`` as a list, after checking that each is inside the vocabulary."""
        ids = list(ids)
        if ids and not (0 <= min(ids) and max(ids) < self._vocab_size):
            bad = [i for i in ids if not 0 <= i < self._vocab_size]
            raise LmlabError(f"ids {bad[:10]} are outside the vocabulary (size {self._vocab_size})")
        return ids

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token = self.backend.id_to_token(token_id) if token_id >= 0 else None
        if token is None:
            raise LmlabError(f"id {token_id} is not in the vocabulary (size {self._vocab_size})")
        return token

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer_json": self.backend.to_str(), "roles": dict(self.roles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HFTokenizer":
        try:
            backend = HFBackend.from_str(data["tokenizer_json"])
        except Exception as exc:  # the library raises a bare Exception for malformed JSON
            raise LmlabError(
                f"the stored Hugging Face tokenizer is invalid ({first_line(exc)}); re-save it"
            ) from exc
        return cls(backend, data.get("roles"))
