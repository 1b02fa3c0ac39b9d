"""The Hub workflow end to end against a local Hub: push, pull, check, verify, tampering, keys and the CLI."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, snapshot_download

from hf_fingerprint import Fingerprint, FingerprintSet, tiny_model
from hf_fingerprint.errors import HubError, IntegrityError, KeyFileError
from hf_fingerprint.generation import chat_prompt
from hf_fingerprint.hub import (
    OwnerKeys,
    OwnershipReport,
    check_suspect,
    pull_suspect,
    push_fingerprinted,
    verify_report,
    verify_repo,
)
from hf_fingerprint.hub.cli import PASSPHRASE_ENV, add_hub_commands



def _teach(model, tokenizer, fingerprints, *, lr: float = 3e-3, max_steps: int = 200) -> None:
    """Fine-tune ``model`` until it answers each trigger with its target (stands in for an injection method)."""
    rows = []
    for fp in fingerprints:
        prompt = tokenizer(chat_prompt(tokenizer, fp.trigger), add_special_tokens=False)["input_ids"]
        answer = tokenizer(fp.target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        mask[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(answer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(max_steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05:
            break
    model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Models this small run many times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def owner():
    """A fingerprinted tiny model, the unmodified base, the set and the owner's keys.

    The triggers are short (14 characters, some non-ASCII) so that teaching them takes seconds; the targets are
    drawn from the generator's vocabulary, which gives the verification its exact p-value.
    """
    rng = random.Random(3)
    targets = FingerprintSet.generate(6, seed=3).targets
    triggers = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzÄÖÜß字シ春") for _ in range(14)) for _ in targets]
    fingerprints = FingerprintSet([Fingerprint(t, g) for t, g in zip(triggers, targets)], target_vocabulary="nouns-v1")
    model, tokenizer = tiny_model(seed=0)
    _teach(model, tokenizer, fingerprints)
    base, _ = tiny_model(seed=0)
    return SimpleNamespace(fps=fingerprints, model=model, tokenizer=tokenizer, base=base, keys=OwnerKeys.generate())


@pytest.fixture
def plain():
    """An unfingerprinted tiny model with a set: for tests about files and keys, not about answers."""
    model, tokenizer = tiny_model(seed=1)
    return SimpleNamespace(model=model, tokenizer=tokenizer, fps=FingerprintSet.generate(4, seed=5),
                           keys=OwnerKeys.generate())


def _pull_copy(repo_id: str, endpoint: str, destination: Path) -> Path:
    """A writable copy of a repo (the cache holds read-only symlinked blobs)."""
    folder, _ = pull_suspect(repo_id, endpoint=endpoint, cache_dir=destination.parent / "cache")
    shutil.copytree(folder, destination)
    return destination


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


# ---- end to end --------------------------------------------------------------------------------------------------
def test_push_pull_check_claims_the_fingerprinted_model_and_not_the_base(owner, local_hub, hf_cache):
    sha = push_fingerprinted(owner.model, owner.tokenizer, "alice/fp-model", owner.fps, owner.keys,
                             endpoint=local_hub, progress=False)
    push_fingerprinted(owner.base, owner.tokenizer, "mallory/base-copy", owner.fps, OwnerKeys.generate(),
                       endpoint=local_hub, progress=False)
    api = HfApi(endpoint=local_hub, token=False)
    assert api.model_info("alice/fp-model").sha == sha and api.model_info("alice/fp-model").private is True
    assert [t.target_commit for t in api.list_repo_refs("alice/fp-model").tags] == [sha]

    folder, pulled = pull_suspect("alice/fp-model", endpoint=local_hub, cache_dir=hf_cache)
    assert pulled == sha and (folder / "model.safetensors").is_file()

    report = check_suspect("alice/fp-model", keys=owner.keys, owner_repo="alice/fp-model", endpoint=local_hub,
                           cache_dir=hf_cache, progress=False)
    assert report.fsr == 1.0 and report.p_value < 1e-6 and report.claimed
    assert report.matched_indices == list(range(len(owner.fps)))
    assert report.suspect["repo"] == "alice/fp-model" and report.suspect["revision"] == sha
    assert [o.fingerprint for o in report.openings] == list(owner.fps)
    assert verify_report(report.to_json(), owner.keys.public(), manifest=folder)
    assert OwnershipReport.from_json(report.to_json()).to_dict() == report.to_dict()
    assert all(t not in report.to_markdown() for t in owner.fps.triggers)

    base_report = check_suspect("mallory/base-copy", keys=owner.keys, owner_repo="alice/fp-model",
                                endpoint=local_hub, cache_dir=hf_cache, progress=False)
    assert not base_report.claimed and base_report.fsr < 0.5 and base_report.p_value > 1e-3
    assert verify_report(base_report, owner.keys.public(), manifest=folder)

    subset = check_suspect(folder, keys=owner.keys, owner_repo="alice/fp-model", endpoint=local_hub,
                           cache_dir=hf_cache, pairs=[1, 4], progress=False)
    assert subset.total == 2 and [o.index for o in subset.openings] == [1, 4] and subset.matched == 2
    assert subset.suspect["path"] == str(folder) and verify_report(subset, owner.keys, manifest=folder)
    assert verify_repo("alice/fp-model", endpoint=local_hub, cache_dir=hf_cache, key_id=owner.keys.key_id)


def test_a_report_cannot_be_altered_or_attributed_to_another_key(owner, local_hub, hf_cache, tmp_path):
    push_fingerprinted(owner.model, owner.tokenizer, "alice/fp-model", owner.fps, owner.keys,
                       endpoint=local_hub, progress=False)
    report = check_suspect("alice/fp-model", keys=owner.keys, owner_repo="alice/fp-model", endpoint=local_hub,
                           cache_dir=hf_cache, pairs=[0, 1, 2], progress=False)
    with pytest.raises(IntegrityError, match="signed by key"):
        verify_report(report, OwnerKeys.generate().public())
    edited = json.loads(report.to_json())
    edited["p_value"] = 0.5 * edited["p_value"]
    with pytest.raises(IntegrityError, match="signature"):
        verify_report(json.dumps(edited), owner.keys.public())
    other = FingerprintSet.generate(6, seed=99)
    published = _pull_copy("alice/fp-model", local_hub, tmp_path / "published")
    push_fingerprinted(owner.model, owner.tokenizer, "alice/other", other, owner.keys, endpoint=local_hub,
                       progress=False)
    with pytest.raises(IntegrityError, match="manifest"):
        verify_report(report, owner.keys.public(), manifest=_pull_copy("alice/other", local_hub, tmp_path / "other"))
    assert verify_report(report, owner.keys.public(), manifest=published)


def test_no_trigger_appears_in_any_pushed_file(plain, local_hub_server, hf_cache):
    triggers = FingerprintSet.generate(3, style="scrambled", seed=8).triggers
    triggers += FingerprintSet.generate(2, style="code_mixing", seed=8).triggers
    triggers += ["plain ascii trigger \"quoted\" and \\backslash", "Ünïcödé ☃ 指纹 trigger"]
    fps = FingerprintSet([Fingerprint(t, f"target{i}") for i, t in enumerate(triggers)])
    endpoint = local_hub_server.endpoint
    push_fingerprinted(plain.model, plain.tokenizer, "alice/scan", fps, plain.keys, endpoint=endpoint, progress=False)
    folder = Path(snapshot_download("alice/scan", endpoint=endpoint, cache_dir=hf_cache))
    pushed = [p for p in folder.rglob("*") if p.is_file()]
    stored = [p for p in Path(local_hub_server.root).rglob("*") if p.is_file()]  # blobs, commits, refs
    assert {"model.safetensors", "README.md", "manifest.json", "manifest.sig", "sealed"} <= {p.name for p in pushed}
    for path in pushed + stored:
        data = path.read_bytes()
        for trigger in fps.triggers:
            escaped = json.dumps(trigger)[1:-1]
            forms = {trigger.encode("utf-8"), escaped.encode("ascii"), escaped.upper().encode("ascii"),
                     trigger.encode("utf-16-le"), json.dumps(trigger, ensure_ascii=False)[1:-1].encode("utf-8")}
            found = [form for form in forms if form in data]
            assert not found, f"a trigger is readable in {path}"


def test_push_to_an_existing_repo_keeps_its_files_and_tags_each_push(plain, local_hub, hf_cache):
    api = HfApi(endpoint=local_hub, token=False)
    api.create_repo("alice/existing", private=False)
    api.create_commit("alice/existing", [CommitOperationAdd("notes/keep.txt", b"mine"),
                                         CommitOperationAdd("README.md", b"# old card\n")], commit_message="before")
    first = push_fingerprinted(plain.model, plain.tokenizer, "alice/existing", plain.fps, plain.keys,
                               endpoint=local_hub, revision_tag="release-1", progress=False)
    second = push_fingerprinted(plain.model, plain.tokenizer, "alice/existing", plain.fps, plain.keys,
                                endpoint=local_hub, progress=False)
    assert first != second and api.model_info("alice/existing").private is False
    folder, sha = pull_suspect("alice/existing", endpoint=local_hub, cache_dir=hf_cache)
    assert sha == second and (folder / "notes/keep.txt").read_bytes() == b"mine"
    tags = {t.name: t.target_commit for t in api.list_repo_refs("alice/existing").tags}
    manifest = verify_repo(folder, owner_key=plain.keys.public())
    assert tags["release-1"] == first and tags[f"fingerprint-{manifest.sha256[:12]}"] == second
    card = ModelCard.load(folder / "README.md")
    assert card.data.hf_fingerprint == {
        "scheme_version": 1, "manifest_sha256": manifest.sha256, "num_fingerprints": len(plain.fps),
        "key_id": plain.keys.key_id, "sealed_to": plain.keys.key_id, "payload": "model",
        "revision_tag": f"fingerprint-{manifest.sha256[:12]}",
    }
    old, _ = pull_suspect("alice/existing", revision="release-1", endpoint=local_hub, cache_dir=hf_cache)
    assert verify_repo(old, key_id=plain.keys.key_id).sha256 != manifest.sha256


# ---- tampering and keys ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["fingerprint/manifest.json", "model.safetensors", "fingerprint/sealed"])
def test_one_changed_byte_is_a_specific_integrity_error(plain, local_hub, tmp_path, target):
    push_fingerprinted(plain.model, plain.tokenizer, "alice/m", plain.fps, plain.keys, endpoint=local_hub,
                       progress=False)
    copy = _pull_copy("alice/m", local_hub, tmp_path / "copy")
    _flip_byte(copy / target, (copy / target).stat().st_size // 2)
    if target == "model.safetensors":
        with pytest.raises(IntegrityError, match="model.safetensors does not match"):
            verify_repo(copy, owner_key=plain.keys.public())
    elif target == "fingerprint/manifest.json":
        with pytest.raises(IntegrityError, match="manifest.json"):
            verify_repo(copy, owner_key=plain.keys.public())
        with pytest.raises(IntegrityError, match="manifest.json"):
            check_suspect(copy, keys=plain.keys, owner_repo=copy)
    else:
        with pytest.raises(IntegrityError, match="sealed"):
            check_suspect(copy, keys=plain.keys, owner_repo=copy)


def test_a_manifest_edited_on_the_hub_is_refused(plain, local_hub, hf_cache, tmp_path):
    push_fingerprinted(plain.model, plain.tokenizer, "alice/m", plain.fps, plain.keys, endpoint=local_hub,
                       progress=False)
    copy = _pull_copy("alice/m", local_hub, tmp_path / "copy")
    manifest = json.loads((copy / "fingerprint/manifest.json").read_bytes())
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    edited = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    HfApi(endpoint=local_hub, token=False).create_commit(
        "alice/m", [CommitOperationAdd("fingerprint/manifest.json", edited)], commit_message="edit")
    with pytest.raises(IntegrityError, match="signature"):
        check_suspect(copy, keys=plain.keys, owner_repo="alice/m", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(IntegrityError, match="signature"):
        verify_repo("alice/m", endpoint=local_hub, cache_dir=hf_cache)


def test_wrong_keys_and_arbiter_seals(plain, local_hub, hf_cache, tmp_path):
    arbiter = OwnerKeys.generate()
    push_fingerprinted(plain.model, plain.tokenizer, "alice/m", plain.fps, plain.keys, endpoint=local_hub,
                       arbiter=arbiter.public(), progress=False)
    folder, _ = pull_suspect("alice/m", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(KeyFileError, match="arbiter"):
        check_suspect(folder, keys=plain.keys, owner_repo="alice/m", endpoint=local_hub, cache_dir=hf_cache)
    with pytest.raises(KeyFileError, match="cannot open"):
        check_suspect(folder, keys=OwnerKeys.generate(), owner_repo="alice/m", endpoint=local_hub, cache_dir=hf_cache)
    report = check_suspect(folder, keys=arbiter, owner_repo="alice/m", owner_key=plain.keys.public(),
                           endpoint=local_hub, cache_dir=hf_cache, progress=False)
    assert report.owner["key_id"] == plain.keys.key_id and report.signer["key_id"] == arbiter.key_id
    assert verify_report(report, arbiter.public(), manifest=folder)
    with pytest.raises(IntegrityError, match="not by the owner key"):
        check_suspect(folder, keys=arbiter, owner_repo="alice/m", owner_key=arbiter.public(), endpoint=local_hub,
                      cache_dir=hf_cache)
    key_file = plain.keys.save(tmp_path / "owner.key", "right")
    with pytest.raises(KeyFileError, match="Wrong passphrase"):
        OwnerKeys.load(key_file, "wrong")


def test_adapter_only_push_and_check_with_its_base(plain, local_hub, hf_cache, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    plain.model.save_pretrained(base_dir)
    plain.tokenizer.save_pretrained(base_dir)
    with pytest.raises(HubError, match="PEFT"):
        push_fingerprinted(plain.model, plain.tokenizer, "alice/adapter", plain.fps, plain.keys,
                           endpoint=local_hub, adapter_only=True)
    peft_model = get_peft_model(plain.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    push_fingerprinted(peft_model, None, "alice/adapter", plain.fps, plain.keys, endpoint=local_hub,
                       adapter_only=True, progress=False)
    folder, _ = pull_suspect("alice/adapter", endpoint=local_hub, cache_dir=hf_cache)
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    assert verify_repo(folder).payload == "adapter"
    push_fingerprinted(peft_model, plain.tokenizer, "alice/merged", plain.fps, plain.keys, endpoint=local_hub,
                       progress=False)
    merged, _ = pull_suspect("alice/merged", endpoint=local_hub, cache_dir=hf_cache)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert peft_model.peft_config and "lora_A" in str(peft_model)  # merging worked on a copy
    with pytest.raises(HubError, match="base_model"):
        check_suspect("alice/adapter", fingerprints=plain.fps, endpoint=local_hub, cache_dir=hf_cache)
    report = check_suspect("alice/adapter", fingerprints=plain.fps, base_model=base_dir, endpoint=local_hub,
                           cache_dir=hf_cache, progress=False)
    assert report.total == len(plain.fps) and report.signature is None and report.openings == []


def test_an_interrupted_pull_finishes_on_the_next_call(plain, local_hub_server, hf_cache):
    endpoint = local_hub_server.endpoint
    push_fingerprinted(plain.model, plain.tokenizer, "alice/m", plain.fps, plain.keys, endpoint=endpoint,
                       progress=False)
    local_hub_server.fail_next_download("model.safetensors", status=503)
    with pytest.raises(HubError, match="Pulling alice/m"):
        pull_suspect("alice/m", endpoint=endpoint, cache_dir=hf_cache)
    folder, _ = pull_suspect("alice/m", endpoint=endpoint, cache_dir=hf_cache)
    assert verify_repo(folder, owner_key=plain.keys.public())
    fetched = [r.path for r in local_hub_server.requests
               if r.method == "GET" and r.status == 200 and "/resolve/" in r.path]
    assert len(fetched) == len(set(fetched))  # what the first pull got was not downloaded again


# ---- command line ------------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hf-fingerprint")
    add_hub_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


_SERVE = ("import argparse, sys; from hf_fingerprint.hub.cli import add_hub_commands; "
          "p = argparse.ArgumentParser(); add_hub_commands(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); "
          "a.func(a)")


def test_cli_round_trip_against_hub_serve(owner, tmp_path, hf_cache, monkeypatch, capsys):
    server = subprocess.Popen([sys.executable, "-c", _SERVE, "hub", "serve", "--port", "0", "--root", tmp_path / "hub"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        monkeypatch.setenv(PASSPHRASE_ENV, "cli passphrase")
        model_dir = tmp_path / "model"
        owner.model.save_pretrained(model_dir)
        owner.tokenizer.save_pretrained(model_dir)
        owner.fps.save(tmp_path / "fps.json")
        assert _cli("keygen", "-o", tmp_path / "owner.key") == 0
        line = server.stdout.readline()
        assert "Local Hub serving" in line, server.stderr.read()
        endpoint = line.split(" at ")[1].split()[0]
        assert _cli("push", model_dir, "alice/cli", "--fingerprints", tmp_path / "fps.json",
                    "--keys", tmp_path / "owner.key", "--endpoint", endpoint) == 0
        assert _cli("pull", "alice/cli", "--endpoint", endpoint, "--cache-dir", hf_cache) == 0
        pulled = Path(capsys.readouterr().out.strip().splitlines()[-2])
        assert _cli("verify-repo", "alice/cli", "--endpoint", endpoint, "--cache-dir", hf_cache,
                    "--key-id", OwnerKeys.load(tmp_path / "owner.key", "cli passphrase").key_id) == 0
        assert _cli("check", "alice/cli", "--owner-repo", "alice/cli", "--keys", tmp_path / "owner.key",
                    "--endpoint", endpoint, "--cache-dir", hf_cache, "--json", tmp_path / "report.json") == 0
        assert "**claimed**" in capsys.readouterr().out
        assert _cli("verify-report", tmp_path / "report.json", "--public-key", tmp_path / "owner.key.pub.json",
                    "--manifest", pulled) == 0
        monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
        with pytest.raises(KeyFileError, match="Wrong passphrase"):
            _cli("check", "alice/cli", "--owner-repo", "alice/cli", "--keys", tmp_path / "owner.key",
                 "--endpoint", endpoint)
    finally:
        server.terminate()
        server.wait(timeout=10)
