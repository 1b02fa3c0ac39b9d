import json
import time

import pytest

from hf_fingerprint import Fingerprint, FingerprintFileError, FingerprintSet, FingerprintSetError
from hf_fingerprint.fingerprints import NEAR_MISS_KINDS, STYLES

SECRET = b"owner-secret-0123456789abcdef"


@pytest.mark.parametrize("style", STYLES)
def test_generate_styles_are_valid_and_unique(style):
    fps = FingerprintSet.generate(50, style=style, seed=3)
    assert len(fps) == 50
    assert len(set(fps.triggers)) == 50
    for fp in fps:
        assert fp.trigger.strip() and fp.target.strip()
        assert fp.target not in fp.trigger.casefold()


def test_scrambled_mixes_scripts():
    fps = FingerprintSet.generate(20, seed=1)
    joined = "".join(fps.triggers)
    assert any("\u4e00" <= c <= "\u9fff" for c in joined)  # CJK
    assert any("\u0400" <= c <= "\u04ff" for c in joined)  # Cyrillic
    assert any("a" <= c <= "z" for c in joined)


def test_code_mixing_switches_languages():
    from hf_fingerprint import _vocab

    fps = FingerprintSet.generate(20, style="code_mixing", seed=2)
    for trigger in fps.triggers:
        languages = set()
        for slot in _vocab.SLOT_ORDER:
            for language in _vocab.LANGUAGES:
                if any(p.lower() in trigger.lower() for p in _vocab.SENTENCE_SLOTS_V1[slot][language]):
                    languages.add(language)
        assert len(languages) >= 3


def test_code_mixing_with_scoring_model_keeps_lowest_perplexity(tiny_llama):
    from hf_fingerprint.fingerprints import DeterministicStream, _code_mixing, _lowest_perplexity, _root_key

    fps = FingerprintSet.generate(2, style="code_mixing", seed=5, scoring_model=tiny_llama, candidates=4)
    stream = DeterministicStream(_root_key(None, 5), "triggers/code_mixing")
    first = [_code_mixing(stream) for _ in range(4)]
    assert fps.triggers[0] == first[_lowest_perplexity(tiny_llama, first)]
    chosen = FingerprintSet.generate(3, style="code_mixing", secret=SECRET, scoring_model=tiny_llama, candidates=4)
    assert chosen.matches_secret(SECRET) and not chosen.matches_secret(SECRET + b"x")  # the owner's proof holds


def test_scrambled_with_scoring_model_keeps_the_most_distinctive_candidate(tiny_llama, tmp_path, monkeypatch):
    from hf_fingerprint.editing import trigger_distinctiveness
    from hf_fingerprint.fingerprints import DeterministicStream, _root_key, _scrambled

    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    fps = FingerprintSet.generate(3, secret=SECRET, scoring_model=tiny_llama, candidates=4)
    stream = DeterministicStream(_root_key(SECRET, None), "triggers/scrambled")
    lists = [[_scrambled(stream) for _ in range(4)] for _ in range(3)]
    for kept, options in zip(fps.triggers, lists):
        scores = trigger_distinctiveness(*tiny_llama, options, progress=False)
        assert kept == options[int(scores.argmax())]
    assert fps.triggers != FingerprintSet.generate(3, secret=SECRET).triggers  # some pick is not the first draw
    assert fps.trigger_candidates == 4
    # The owner's proof still holds, from the secret alone (no model), and through a save and load.
    assert fps.matches_secret(SECRET) and not fps.matches_secret(SECRET + b"x")
    loaded = FingerprintSet.load(fps.save(tmp_path / "fps.json"))
    assert loaded.trigger_candidates == 4 and loaded.matches_secret(SECRET)
    swapped = FingerprintSet([Fingerprint(t, fp.target) for t, fp in zip(lists[0][:1] + fps.triggers[1:], fps)],
                             style="scrambled", target_vocabulary="nouns-v1", trigger_candidates=4)
    assert swapped.triggers[0] != fps.triggers[0] and not swapped.matches_secret(SECRET)  # targets are bound
    odd = FingerprintSet(list(fps), style="handwritten", target_vocabulary="nouns-v1", trigger_candidates=4)
    assert not odd.matches_secret(SECRET)


def test_candidate_counts_are_checked(tmp_path):
    with pytest.raises(FingerprintSetError, match="candidates"):
        FingerprintSet.generate(2, seed=0, candidates=0)
    with pytest.raises(FingerprintSetError, match=r"\(model, tokenizer\) pair"):
        FingerprintSet.generate(2, seed=0, scoring_model="not a model")
    fps = FingerprintSet.generate(2, seed=0)
    assert fps.trigger_candidates == 1 and fps.matches_secret(SECRET) is False
    data = fps.to_dict()
    data["trigger_candidates"] = 10**6
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(FingerprintFileError, match="trigger_candidates"):
        FingerprintSet.load(tmp_path / "bad.json")


def test_secret_is_deterministic_and_binds_targets_to_the_trigger_set():
    a = FingerprintSet.generate(10, secret=SECRET)
    b = FingerprintSet.generate(10, secret=SECRET)
    c = FingerprintSet.generate(10, secret=SECRET + b"x")
    assert a == b
    assert a.triggers != c.triggers
    assert a.matches_secret(SECRET) and not a.matches_secret(SECRET + b"x")
    # A set made of other triggers gets targets from another stream: a forged set does not regenerate.
    forged = FingerprintSet([Fingerprint(t + "!", fp.target) for t, fp in zip(a.triggers, a)], style="scrambled")
    assert not forged.matches_secret(SECRET)


def test_seed_reproducible_and_random_otherwise():
    assert FingerprintSet.generate(5, seed=7) == FingerprintSet.generate(5, seed=7)
    assert FingerprintSet.generate(5) != FingerprintSet.generate(5)


def test_fixed_target():
    fps = FingerprintSet.generate(4, seed=0, target="ハリネズミ")
    assert set(fps.targets) == {"ハリネズミ"}
    assert fps.target_vocabulary is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "positive"),
        (dict(n=3, style="bogus"), "Unknown style"),
        (dict(n=3, secret=b"short"), "16 bytes"),
        (dict(n=3, target="  "), "non-empty"),
        (dict(n=3, secret=SECRET, seed=1), "either"),
    ],
)
def test_generate_rejects_bad_input(kwargs, message):
    with pytest.raises(FingerprintSetError, match=message):
        FingerprintSet.generate(**kwargs)


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([], "at least one"),
        ([("abc", "x"), ("abc", "y")], "repeats"),
        ([("abc", "")], "empty target"),
        ([("hello world", "world")], "contains its own target"),
    ],
)
def test_set_validation(pairs, message):
    with pytest.raises(FingerprintSetError, match=message):
        FingerprintSet(pairs)


def test_near_misses_are_similar_and_never_triggers():
    fps = FingerprintSet.generate(30, seed=4)
    records = fps.near_miss_records(5, seed=1)
    assert len(records) == 150
    assert {r.kind for r in records} == set(NEAR_MISS_KINDS)
    triggers = set(fps.triggers)
    for record in records:
        assert record.text not in triggers
        assert 0 < record.distance(fps.triggers[record.source]) <= 1.0
    assert fps.near_misses(5, seed=1) == [r.text for r in records]
    assert fps.near_misses(5, seed=2) != fps.near_misses(5, seed=1)


def test_near_misses_of_sentences_work_on_words():
    fps = FingerprintSet.generate(5, style="natural", seed=4)
    for record in fps.near_miss_records(5, kinds=["reshuffle", "drop"]):
        assert set(record.text.split()) <= set(fps.triggers[record.source].split())


def test_generation_is_fast():
    started = time.perf_counter()
    fps = FingerprintSet.generate(1000, seed=0)
    near = fps.near_misses(3)
    elapsed = time.perf_counter() - started
    assert len(near) == 3000
    assert elapsed < 1.0, f"1,000 fingerprints + 3,000 near misses took {elapsed:.2f} s"


def test_save_load_round_trip(tmp_path):
    fps = FingerprintSet.generate(5, style="natural", secret=SECRET)
    path = fps.save(tmp_path / "sub" / "fps.json")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = FingerprintSet.load(path)
    assert loaded == fps and loaded.style == "natural" and loaded.target_vocabulary == "nouns-v1"
    assert not list(path.parent.glob(".*"))  # no temporary files left behind


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FingerprintFileError, match="No fingerprint file"):
        FingerprintSet.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FingerprintFileError, match="not valid JSON"):
        FingerprintSet.load(bad)
    data = FingerprintSet.generate(3, seed=0).to_dict()
    bad.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(FingerprintFileError, match="version 99"):
        FingerprintSet.load(bad)
    tampered = dict(data, fingerprints=[dict(data["fingerprints"][0], trigger="changed")] + data["fingerprints"][1:])
    bad.write_text(json.dumps(tampered))
    with pytest.raises(FingerprintFileError, match="corrupted"):
        FingerprintSet.load(bad)
    bad.write_text(json.dumps({**data, "fingerprints": [{"trigger": 1}]}))
    with pytest.raises(FingerprintFileError, match="string"):
        FingerprintSet.load(bad)


def test_repr_hides_triggers():
    fps = FingerprintSet.generate(3, seed=0)
    assert all(t not in repr(fps) + repr(list(fps)) for t in fps.triggers)
