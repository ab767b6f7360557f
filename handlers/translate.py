"""Translation: M2M100 (100 languages, one model) or Marian opus-mt models for chosen pairs.

Languages arrive as names, codes or locale tags and are resolved to M2M100 codes. A source of
``auto`` is detected from the text alone with fastText's lid.176 model, which gets most
greetings of two or three words right; one it leaves unclear is decided by the member's
language (``hint``) or a clear enough lead, and the result says the source was guessed.
Detection is deterministic and takes about 0.1 ms (0.4 ms for 2,000 characters), so
``validate``, ``model_for``, ``batch_key`` and ``run_batch`` each resolve the pair again and
always agree: the request stays a plain frozen value, and every batch holds one language
pair by construction. A text already in the target language is refused in
``validate`` (naming the detected language), so echoing it never costs a model load.

Each line of a text is translated on its own, keeping the message's line breaks. Lines too long
for the model are cut at sentence ends (then spaces, then anywhere), so nothing is truncated;
all pieces of a batch go through one ``generate`` call and are stitched back in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from handlers.base import (
    BatchContext,
    BatchStopped,
    HandlerError,
    InvalidInput,
    LoadSpec,
    StopWhenAbandoned,
    Task,
    TaskKind,
    check_text,
    from_pretrained,
)
from handlers.languages import (
    LANGUAGES,
    UNSPACED,
    guess_language,
    load_detector,
    resolve_language,
)
from handlers.text import split_to_fit

AUTO = "auto"
DEFAULT_MODEL = "facebook/m2m100_418M"
"""The multilingual model for every pair without its own model (MIT licence)."""
FAMILIES = ("m2m_100", "marian")
"""``config.model_type`` values the task can drive."""

# Sentence ends: Latin-style punctuation then spaces, or CJK full stops (no space follows).


@dataclass(frozen=True)
class TranslateRequest:
    USER_TEXT: ClassVar[frozenset[str]] = frozenset({"text"})
    """Fields holding what the member wrote: kept out of logs unless the admin opts in."""

    text: str
    target: str
    """A language name, code or locale tag (``French``, ``fr``, ``fr-CA``)."""
    source: str = AUTO
    """Like ``target``, or ``auto`` to detect it from the text."""
    hint: str | None = None
    """The member's (or the server's) language, a code or locale tag: with ``auto``, it
    decides a short text whose language the text alone leaves unclear."""


@dataclass(frozen=True)
class TranslateResult:
    text: str
    source: str
    """ISO code of the source language, detected or given."""
    target: str
    guessed: bool = False
    """The source was assumed for a short text detection left unclear: say so."""


@dataclass
class TranslateModel:
    tokenizer: Any
    model: torch.nn.Module
    family: str
    device: str
    max_input_tokens: int
    """Longest tokenised piece the model is given, special tokens included."""


class TranslateTask(Task[TranslateRequest, TranslateResult]):
    name = "translate"
    kind = TaskKind.TEXT

    def __init__(
        self,
        max_chars: int = 2000,
        pair_models: Mapping[str, str] | None = None,
        max_piece_tokens: int = 256,
        detect_confidence: float = 0.5,
    ) -> None:
        """``pair_models`` maps ``"en-fr"`` style pairs to one-pair (Marian) models.

        ``max_piece_tokens`` caps each piece below the model's own limit: sentence-level
        models drop sentences from long inputs. ``detect_confidence`` is the probability
        below which ``auto`` gives up and asks for the source language.
        """
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        if max_piece_tokens < 8:
            raise ValueError(f"max_piece_tokens must be at least 8, got {max_piece_tokens}")
        if not 0 <= detect_confidence <= 1:
            raise ValueError(f"detect_confidence must be in [0, 1], got {detect_confidence}")
        self.max_chars = max_chars
        self.max_piece_tokens = max_piece_tokens
        self.detect_confidence = detect_confidence
        self.pair_models = {_pair_key(pair): model for pair, model in (pair_models or {}).items()}

    def languages(self, request: TranslateRequest) -> tuple[str, str]:
        """The request's (source, target) codes, detecting an ``auto`` source."""
        source, target, _ = self.pair(request)
        return source, target

    def pair(self, request: TranslateRequest) -> tuple[str, str, bool]:
        """(source, target, whether the source was guessed for a short text)."""
        if request.target.strip().lower() == AUTO:
            raise InvalidInput("target", "cannot be auto; choose the language to translate into")
        target = resolve_language(request.target, "target")
        if request.source.strip().lower() != AUTO:
            return resolve_language(request.source, "source"), target, False
        hint = None
        if request.hint:
            with contextlib.suppress(InvalidInput):  # a locale M2M100 lacks: no hint
                hint = resolve_language(request.hint, "hint")
        if hint == target:  # the text is not in the language it is translated into
            hint = None
        guess = guess_language(request.text, hint, self.detect_confidence)
        if guess.code is None:
            raise InvalidInput("source", "could not detect the language; choose the source")
        return guess.code, target, guess.guessed

    def prepare(self) -> None:
        load_detector()

    def validate(self, request: TranslateRequest) -> None:
        check_text("text", request.text, self.max_chars)
        source, target, guessed = self.pair(request)
        if source == target:
            detected = " (detected)" if request.source.strip().lower() == AUTO else ""
            detected = " (guessed)" if guessed else detected
            raise InvalidInput(
                "target",
                f"the text is already in {LANGUAGES[target]}{detected}; "
                "choose another target, or the source if detection was wrong",
            )

    def model_for(self, request: TranslateRequest, default: str) -> str:
        source, target = self.languages(request)
        return self.pair_models.get(f"{source}-{target}", default)

    def batch_key(self, request: TranslateRequest) -> Hashable:
        return self.pair(request)  # a guessed source is said in each of its batch's results

    def cost(self, request: TranslateRequest) -> int:
        # Rough tokens in plus tokens out: the budget only has to track the work.
        return len(request.text) // 2 + 2

    def load(self, spec: LoadSpec) -> TranslateModel:
        config = AutoConfig.from_pretrained(spec.source, trust_remote_code=False)
        if config.model_type not in FAMILIES:
            raise HandlerError(
                f"{spec.source} is a {config.model_type!r} model; "
                f"translation supports {', '.join(FAMILIES)} models"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
        model = from_pretrained(AutoModelForSeq2SeqLM, spec).to(spec.device).eval()
        # run_batch always sets max_new_tokens; a checkpoint's max_length would only warn.
        model.generation_config.max_length = None
        limit = min(
            self.max_piece_tokens, tokenizer.model_max_length, config.max_position_embeddings
        )
        return TranslateModel(tokenizer, model, config.model_type, spec.device, limit)

    def model_bytes(self, model: TranslateModel) -> int:
        return super().model_bytes(model.model)

    def run_batch(
        self, model: TranslateModel, requests: Sequence[TranslateRequest], ctx: BatchContext
    ) -> list[TranslateResult]:
        source, target, guessed = self.pair(requests[0])
        tokenizer = model.tokenizer
        generate_kwargs: dict[str, Any] = {}
        if model.family == "m2m_100":
            for option, code in (("source", source), ("target", target)):
                if code not in tokenizer.lang_code_to_id:
                    raise InvalidInput(option, f"{LANGUAGES[code]} is not served by this model")
            tokenizer.src_lang = source  # safe: run_batch is only ever called on one thread
            generate_kwargs["forced_bos_token_id"] = tokenizer.get_lang_id(target)

        def size(piece: str) -> int:
            return len(tokenizer(piece, add_special_tokens=False, verbose=False).input_ids)

        budget = model.max_input_tokens - tokenizer.num_special_tokens_to_add()

        def pieces_of(line: str) -> list[str]:
            cut = split_to_fit(line.strip(), size, budget)
            return [" ".join(piece.split()) for piece in cut if piece.strip()]

        # Every request becomes lines, every non-blank line one or more pieces.
        layout = [[pieces_of(line) for line in r.text.split("\n")] for r in requests]
        pieces = [piece for lines in layout for line in lines for piece in line]
        translated = iter(self._generate(model, pieces, generate_kwargs, ctx))
        joiner = "" if target in UNSPACED else " "
        return [
            TranslateResult(
                "\n".join(joiner.join(next(translated) for _ in line) for line in lines),
                source,
                target,
                guessed,
            )
            for lines in layout
        ]

    def _generate(
        self,
        model: TranslateModel,
        pieces: list[str],
        generate_kwargs: dict[str, Any],
        ctx: BatchContext,
    ) -> list[str]:
        """Translate every piece in one padded ``generate`` call."""
        encoded = model.tokenizer(pieces, padding=True, return_tensors="pt").to(model.device)
        # Translations rarely run past twice the source; the positions table bounds them too.
        # Each row is cut to its own budget, so a runaway row ends the same in any batch.
        ceiling = model.model.config.max_position_embeddings - 2
        budgets = [min(2 * n + 16, ceiling) for n in encoded.attention_mask.sum(dim=1).tolist()]
        with torch.inference_mode():
            output = model.model.generate(
                **encoded,
                max_new_tokens=max(budgets),
                stopping_criteria=[StopWhenAbandoned(ctx)],
                **generate_kwargs,
            )
        if ctx.should_stop():
            raise BatchStopped
        # Language tokens are not always registered as special, so drop them by id.
        hidden = set(model.tokenizer.all_special_ids)
        if model.family == "m2m_100":
            hidden |= set(model.tokenizer.lang_code_to_id.values())
        # A row holds the decoder start, then up to ``budget`` tokens of which the last may be
        # a forced end: keeping ``budget`` ids drops exactly that position in any batch.
        kept = [
            [t for t in row[:budget] if t not in hidden]
            for row, budget in zip(output.tolist(), budgets, strict=True)
        ]
        return [text.strip() for text in model.tokenizer.batch_decode(kept)]


def _pair_key(pair: str) -> str:
    """``"en-fr"`` (codes or names on each side of one hyphen) in canonical code form."""
    parts = pair.split("-")
    if len(parts) != 2:
        raise ValueError(f"pair_models keys look like 'en-fr', got {pair!r}")
    try:
        source, target = (resolve_language(part) for part in parts)
    except InvalidInput as exc:
        raise ValueError(f"pair_models key {pair!r}: {exc.message}") from exc
    return f"{source}-{target}"
