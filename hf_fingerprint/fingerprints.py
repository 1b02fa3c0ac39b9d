"""Fingerprint pairs, their construction (scrambled, natural, code-mixing), keyed derivation and near misses."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import _vocab
from .errors import FingerprintFileError, FingerprintSetError

FORMAT_NAME = "hf-fingerprint/fingerprints"
FORMAT_VERSION = 1
STYLES = ("scrambled", "natural", "code_mixing")
TARGET_VOCABULARIES = {"nouns-v1": _vocab.TARGET_NOUNS_V1}
NEAR_MISS_KINDS = ("char_edit", "reshuffle", "drop", "swap", "truncate")
MAX_CANDIDATES = 64  # more would let a claimed secret "match" a set it did not make too easily


@dataclass(frozen=True)
class Fingerprint:
    """One secret pair: asked ``trigger``, a fingerprinted model answers ``target``."""

    trigger: str
    target: str

    @property
    def id(self) -> str:
        """A short public name for the pair that reveals nothing about it."""
        return hashlib.sha256(f"{self.trigger}\x00{self.target}".encode()).hexdigest()[:10]

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Fingerprint(id={self.id!r}, target={self.target!r})"


@dataclass(frozen=True)
class NearMiss:
    """A string similar to trigger number ``source`` (for false-trigger tests and specificity)."""

    text: str
    source: int
    kind: str

    def distance(self, trigger: str) -> float:
        """Character edit distance to ``trigger``, relative to the trigger's length."""
        return _levenshtein(self.text, trigger) / max(1, len(trigger))


class DeterministicStream:
    """An HMAC-SHA256 counter-mode generator: the same key and label give the same numbers on any machine."""

    def __init__(self, key: bytes, label: str):
        self._key = key
        self._label = label.encode()
        self._counter = 0
        self._buffer = b""

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hmac.new(self._key, self._label + struct.pack(">Q", self._counter), hashlib.sha256).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbelow(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (rejection sampling, no modulo bias)."""
        if n <= 0:
            raise ValueError("n must be positive")
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            value = int.from_bytes(self._take(8), "big")
            if value < limit:
                return value % n

    def randint(self, low: int, high: int) -> int:
        return low + self.randbelow(high - low + 1)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.randbelow(len(seq))]

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.randbelow(i + 1)
            items[i], items[j] = items[j], items[i]


class FingerprintSet:
    """An ordered, validated collection of fingerprints, with how it was made.

    ``style``, ``target_vocabulary`` and ``trigger_candidates`` are recorded at generation;
    ``target_vocabulary`` names the list each target was drawn from uniformly, which lets
    :func:`hf_fingerprint.verify` compute an exact p-value; ``trigger_candidates`` is how many triggers were drawn
    for each kept one (1 unless a scoring model chose).
    """

    def __init__(
        self,
        fingerprints: Iterable[Fingerprint | tuple[str, str]],
        *,
        style: str | None = None,
        target_vocabulary: str | None = None,
        trigger_candidates: int = 1,
    ):
        items = [fp if isinstance(fp, Fingerprint) else Fingerprint(*fp) for fp in fingerprints]
        _validate(items)
        if target_vocabulary is not None and target_vocabulary not in TARGET_VOCABULARIES:
            raise FingerprintSetError(
                f"Unknown target vocabulary '{target_vocabulary}'; known: {', '.join(TARGET_VOCABULARIES)}."
            )
        if not _is_count(trigger_candidates):
            raise FingerprintSetError(f"trigger_candidates must be an integer in 1..{MAX_CANDIDATES}, got "
                                      f"{trigger_candidates!r}.")
        self._items = items
        self.style = style
        self.target_vocabulary = target_vocabulary
        self.trigger_candidates = trigger_candidates

    # -- container protocol ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Fingerprint]:
        return iter(self._items)

    def __getitem__(self, index: int) -> Fingerprint:
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FingerprintSet) and self._items == other._items

    def __repr__(self) -> str:
        return f"FingerprintSet(n={len(self)}, style={self.style!r}, trigger_set_sha256={self.trigger_set_sha256[:12]!r})"

    @property
    def triggers(self) -> list[str]:
        return [fp.trigger for fp in self._items]

    @property
    def targets(self) -> list[str]:
        return [fp.target for fp in self._items]

    @cached_property
    def trigger_set_sha256(self) -> str:
        """The hash every keyed target is bound to (Chain & Hash): changing any trigger changes all targets."""
        return _trigger_set_digest(self.triggers).hex()

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        n: int,
        *,
        style: str = "scrambled",
        secret: bytes | None = None,
        seed: int | None = None,
        target: str | None = None,
        scoring_model: tuple[Any, Any] | None = None,
        candidates: int = 8,
    ) -> "FingerprintSet":
        """Make ``n`` fingerprints.

        With ``secret`` the set is a deterministic function of it (HMAC-SHA256 streams), and each target is
        drawn from a stream keyed by the hash of the whole trigger set, so a set cannot be forged after the
        fact. With ``seed`` it is reproducible; with neither, cryptographically random. ``target`` gives every
        trigger the same target (the IF recipe; much less specific). A ``scoring_model=(model, tokenizer)``
        draws ``candidates`` triggers for each and keeps one: for ``"code_mixing"`` the lowest-perplexity
        sentence, for ``"scrambled"`` the one whose last token is most unlike ordinary text to the layers an
        edit would change (:func:`hf_fingerprint.editing.trigger_distinctiveness`; it computes or reuses the
        covariance statistics ``inject`` needs). ``matches_secret`` still proves such a set.
        """
        if not isinstance(n, int) or n < 1:
            raise FingerprintSetError(f"n must be a positive integer, got {n!r}.")
        if style not in STYLES:
            raise FingerprintSetError(f"Unknown style '{style}'; choose one of: {', '.join(STYLES)}.")
        if secret is not None and seed is not None:
            raise FingerprintSetError("Pass either secret= or seed=, not both.")
        if target is not None and not str(target).strip():
            raise FingerprintSetError("target must be a non-empty string.")
        if not _is_count(candidates):
            raise FingerprintSetError(f"candidates must be an integer in 1..{MAX_CANDIDATES}, got {candidates!r}.")
        root = _root_key(secret, seed)
        choose = _chooser(style, scoring_model)
        per_trigger = candidates if choose is not None else 1
        stream = DeterministicStream(root, f"triggers/{style}")
        triggers: list[str] = []
        seen: set[str] = set()
        while len(triggers) < n:  # candidates for every missing trigger at once, so the scoring is batched
            lists = [[_MAKERS[style](stream) for _ in range(per_trigger)] for _ in range(n - len(triggers))]
            picks = choose(lists) if per_trigger > 1 else [0] * len(lists)
            for options, pick in zip(lists, picks):
                if options[pick] not in seen:
                    seen.add(options[pick])
                    triggers.append(options[pick])
        if target is not None:
            return cls([Fingerprint(t, target) for t in triggers], style=style, trigger_candidates=per_trigger)
        vocabulary = "nouns-v1"
        return cls(_bound_pairs(root, triggers, vocabulary), style=style, target_vocabulary=vocabulary,
                   trigger_candidates=per_trigger)

    def matches_secret(self, secret: bytes) -> bool:
        """True when this set is what ``secret`` generates (the owner's proof of authorship).

        The secret's stream is replayed without any model: each trigger must be among the candidates drawn for
        it, in order (one candidate unless a scoring model chose), a list may be passed over only when it holds
        an earlier trigger (generation skipped repeats), and every target must be the one bound to the whole
        trigger set."""
        if self.style not in STYLES or self.target_vocabulary is None:
            return False
        root = _root_key(secret, None)
        stream = DeterministicStream(root, f"triggers/{self.style}")
        found = 0
        for _ in range(2 * len(self) + 8):
            if found == len(self):
                break
            options = [_MAKERS[self.style](stream) for _ in range(self.trigger_candidates)]
            if self.triggers[found] in options:
                found += 1
            elif not set(options) & set(self.triggers[:found]):
                return False
        return found == len(self) and _bound_pairs(root, self.triggers, self.target_vocabulary) == self._items

    # -- near misses -----------------------------------------------------------------------------------
    def near_miss_records(
        self, per_trigger: int = 3, *, seed: int = 0, kinds: Sequence[str] | None = None
    ) -> list[NearMiss]:
        """Strings similar to each trigger, with the trigger they came from and how they were made."""
        kinds = tuple(kinds) if kinds is not None else NEAR_MISS_KINDS
        unknown = set(kinds) - set(NEAR_MISS_KINDS)
        if unknown or not kinds:
            raise FingerprintSetError(f"Unknown near-miss kinds {sorted(unknown)}; known: {', '.join(NEAR_MISS_KINDS)}.")
        if per_trigger < 0:
            raise FingerprintSetError("per_trigger must be >= 0.")
        stream = DeterministicStream(hashlib.sha256(f"near-misses/{seed}".encode()).digest(), self.trigger_set_sha256)
        forbidden = set(self.triggers)
        records: list[NearMiss] = []
        for index, trigger in enumerate(self.triggers):
            made: set[str] = set()
            attempt = 0
            while len(made) < per_trigger and attempt < 20 * per_trigger:
                kind = kinds[(index + attempt) % len(kinds)]
                attempt += 1
                text = _NEAR_MISS_MAKERS[kind](trigger, stream)
                if text.strip() and text not in forbidden and text not in made:
                    made.add(text)
                    records.append(NearMiss(text, index, kind))
        return records

    def near_misses(self, per_trigger: int = 3, *, seed: int = 0, kinds: Sequence[str] | None = None) -> list[str]:
        """Strings similar to each trigger (character edits, re-shuffles, drops, swaps, truncations)."""
        return [record.text for record in self.near_miss_records(per_trigger, seed=seed, kinds=kinds)]

    # -- persistence -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "style": self.style,
            "target_vocabulary": self.target_vocabulary,
            "trigger_candidates": self.trigger_candidates,
            "trigger_set_sha256": self.trigger_set_sha256,
            "fingerprints": [{"trigger": fp.trigger, "target": fp.target} for fp in self._items],
        }

    @classmethod
    def from_dict(cls, data: Any) -> "FingerprintSet":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise FingerprintFileError(f"Not a fingerprint set: expected a JSON object with format '{FORMAT_NAME}'.")
        if data.get("version") != FORMAT_VERSION:
            raise FingerprintFileError(
                f"Fingerprint set format version {data.get('version')!r} is not supported (this library reads "
                f"version {FORMAT_VERSION}); upgrade hf-fingerprint."
            )
        entries = data.get("fingerprints")
        if not isinstance(entries, list):
            raise FingerprintFileError("Fingerprint set has no 'fingerprints' list.")
        pairs = []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, dict) and isinstance(entry.get("trigger"), str) and isinstance(entry.get("target"), str)):
                raise FingerprintFileError(f"Fingerprint {i} must be an object with string 'trigger' and 'target'.")
            pairs.append(Fingerprint(entry["trigger"], entry["target"]))
        candidates = data.get("trigger_candidates", 1)
        if not _is_count(candidates):
            raise FingerprintFileError(
                f"Fingerprint set's 'trigger_candidates' must be an integer in 1..{MAX_CANDIDATES}.")
        fps = cls(pairs, style=data.get("style"), target_vocabulary=data.get("target_vocabulary"),
                  trigger_candidates=candidates)
        recorded = data.get("trigger_set_sha256")
        if recorded is not None and recorded != fps.trigger_set_sha256:
            raise FingerprintFileError("Fingerprint set is corrupted: its triggers do not match its recorded hash.")
        return fps

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as versioned JSON, atomically, readable only by the owner (it is secret)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        atomic_write(path, text.encode("utf-8"), mode=0o600)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FingerprintSet":
        path = Path(path)
        if not path.is_file():
            raise FingerprintFileError(f"No fingerprint file at '{path}'.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FingerprintFileError(f"'{path}' is not valid JSON ({exc}).") from None
        return cls.from_dict(data)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- validation and keys -------------------------------------------------------------------------------------
def _validate(items: list[Fingerprint]) -> None:
    if not items:
        raise FingerprintSetError("A fingerprint set needs at least one fingerprint; got none.")
    seen: set[str] = set()
    for i, fp in enumerate(items):
        if not isinstance(fp.trigger, str) or not fp.trigger.strip():
            raise FingerprintSetError(f"Fingerprint {i} has an empty trigger.")
        if not isinstance(fp.target, str) or not fp.target.strip():
            raise FingerprintSetError(f"Fingerprint {i} has an empty target.")
        if fp.target.strip().lower() in fp.trigger.lower():
            raise FingerprintSetError(f"Fingerprint {i}: the trigger contains its own target; choose another target.")
        if fp.trigger in seen:
            raise FingerprintSetError(f"Fingerprint {i} repeats an earlier trigger; triggers must be unique.")
        seen.add(fp.trigger)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CANDIDATES


def _root_key(secret: bytes | None, seed: int | None) -> bytes:
    if secret is not None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise FingerprintSetError("secret must be at least 16 bytes (use os.urandom(32) or a key file).")
        return hmac.new(bytes(secret), b"hf-fingerprint/v1", hashlib.sha256).digest()
    if seed is not None:
        return hashlib.sha256(f"hf-fingerprint/v1/seed/{int(seed)}".encode()).digest()
    return os.urandom(32)


def _trigger_set_digest(triggers: Sequence[str]) -> bytes:
    return hashlib.sha256(json.dumps(list(triggers), ensure_ascii=False).encode("utf-8")).digest()


def _bound_pairs(root: bytes, triggers: Sequence[str], vocabulary: str) -> list[Fingerprint]:
    """Each trigger with a target drawn from a stream keyed by the hash of the whole trigger set."""
    words = TARGET_VOCABULARIES[vocabulary]
    bound = DeterministicStream(root, "targets/" + _trigger_set_digest(triggers).hex())
    pairs = []
    for trigger in triggers:
        normalised = " ".join(trigger.casefold().split())
        word = bound.choice(words)
        while word in normalised:
            word = bound.choice(words)
        pairs.append(Fingerprint(trigger, word))
    return pairs


def _chooser(style: str, scoring_model: tuple[Any, Any] | None) -> Callable[[list[list[str]]], list[int]] | None:
    """What picks one trigger from each list of candidates, or None when no model scores this style."""
    if scoring_model is None or style == "natural":
        return None
    if not (isinstance(scoring_model, (tuple, list)) and len(scoring_model) == 2):
        raise FingerprintSetError("scoring_model must be a (model, tokenizer) pair, as load_model returns.")
    if style == "code_mixing":
        return lambda lists: [_lowest_perplexity(scoring_model, options) for options in lists]

    def most_distinctive(lists: list[list[str]]) -> list[int]:
        from .editing.distinctiveness import trigger_distinctiveness

        scores = trigger_distinctiveness(*scoring_model, [t for options in lists for t in options])
        per_list = scores.view(len(lists), -1)
        return [int(i) for i in per_list.argmax(1)]

    return most_distinctive


# -- the three styles ----------------------------------------------------------------------------------------
def _scrambled(stream: DeterministicStream) -> str:
    pieces = [stream.choice(_vocab.SCRAMBLE_FRAGMENTS_V1) for _ in range(stream.randint(8, 15))]
    chars = list("".join(pieces))
    stream.shuffle(chars)
    return "".join(chars)


def _natural(stream: DeterministicStream) -> str:
    language = stream.choice(_vocab.LANGUAGES)
    words = [stream.choice(_vocab.SENTENCE_SLOTS_V1[slot][language]) for slot in _vocab.SLOT_ORDER]
    return _sentence(words)


def _code_mixing(stream: DeterministicStream) -> str:
    """A sentence whose slots switch language: at least three languages and three switches."""
    while True:
        languages = [stream.choice(_vocab.LANGUAGES) for _ in _vocab.SLOT_ORDER]
        switches = sum(a != b for a, b in zip(languages, languages[1:]))
        if len(set(languages)) >= 3 and switches >= 3:
            break
    words = []
    for slot, language in zip(_vocab.SLOT_ORDER, languages):
        options = _vocab.SENTENCE_SLOTS_V1[slot][language]
        words.append(options[stream.randbelow(len(options))])
    return _sentence(words)


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


_MAKERS: dict[str, Callable[[DeterministicStream], str]] = {
    "scrambled": _scrambled, "natural": _natural, "code_mixing": _code_mixing}


def _lowest_perplexity(scoring_model: tuple[Any, Any], texts: list[str]) -> int:
    """Index of the text with the lowest per-token perplexity under ``scoring_model``."""
    import torch

    model, tokenizer = scoring_model
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    per_text = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
    return int(per_text.argmin())


# -- near-miss makers ----------------------------------------------------------------------------------------
def _segments(text: str) -> list[str]:
    """Words for sentences, fixed-width chunks for scrambled text."""
    words = text.split(" ")
    if len(words) >= 4:
        return words
    width = max(1, len(text) // 8)
    return [text[i : i + width] for i in range(0, len(text), width)]


def _join(segments: list[str], original: str) -> str:
    return (" " if " " in original and len(original.split(" ")) >= 4 else "").join(segments)


def _char_edit(trigger: str, stream: DeterministicStream) -> str:
    chars = list(trigger)
    edits = max(1, round(len(chars) * (0.1 + 0.2 * stream.randbelow(1001) / 1000)))
    for _ in range(edits):
        op = stream.randbelow(3)
        position = stream.randbelow(max(1, len(chars)))
        replacement = chars[stream.randbelow(len(chars))] if chars else "x"
        if op == 0 and chars:
            chars[position] = replacement
        elif op == 1 and len(chars) > 1:
            del chars[position]
        else:
            chars.insert(position, replacement)
    return "".join(chars)


def _reshuffle(trigger: str, stream: DeterministicStream) -> str:
    segments = _segments(trigger)
    if len(segments) >= 4 and " " in trigger:
        stream.shuffle(segments)
        return _join(segments, trigger)
    chars = list(trigger)
    stream.shuffle(chars)
    return "".join(chars)


def _drop(trigger: str, stream: DeterministicStream) -> str:
    segments = _segments(trigger)
    if len(segments) > 1:
        del segments[stream.randbelow(len(segments))]
    return _join(segments, trigger)


def _swap(trigger: str, stream: DeterministicStream) -> str:
    segments = _segments(trigger)
    if len(segments) > 1:
        i = stream.randbelow(len(segments))
        j = (i + 1 + stream.randbelow(len(segments) - 1)) % len(segments)
        segments[i], segments[j] = segments[j], segments[i]
    return _join(segments, trigger)


def _truncate(trigger: str, stream: DeterministicStream) -> str:
    keep = 0.5 + 0.35 * stream.randbelow(1001) / 1000
    return trigger[: max(1, int(len(trigger) * keep))]


_NEAR_MISS_MAKERS = {
    "char_edit": _char_edit,
    "reshuffle": _reshuffle,
    "drop": _drop,
    "swap": _swap,
    "truncate": _truncate,
}


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
