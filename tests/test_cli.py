import json
import subprocess
import sys

import pytest

from hf_fingerprint.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "hf_fingerprint.cli", *args], capture_output=True, text=True)


def test_generate_with_new_secret_and_reuse(tmp_path, capsys):
    key, out = tmp_path / "key.bin", tmp_path / "fps.json"
    assert main(["generate", "-n", "4", "-o", str(out), "--new-secret", str(key), "--near-misses", "2"]) == 0
    first = json.loads(out.read_text())
    assert len(first["fingerprints"]) == 4 and len(key.read_bytes()) == 32
    printed = capsys.readouterr().out
    assert all(fp["trigger"] not in printed for fp in first["fingerprints"])
    assert main(["generate", "-n", "4", "-o", str(out), "--secret-file", str(key)]) == 0
    assert json.loads(out.read_text()) == first
    assert main(["generate", "-n", "4", "-o", str(out), "--new-secret", str(key)]) == 2  # never overwrite a secret


def test_generate_with_a_scoring_model(tmp_path, monkeypatch):
    from hf_fingerprint import FingerprintSet, tiny_model

    monkeypatch.setenv("HF_FINGERPRINT_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    key, out = tmp_path / "key.bin", tmp_path / "fps.json"
    result = run("generate", "-n", "3", "-o", str(out), "--new-secret", str(key), "--model", str(tmp_path / "model"),
                 "--candidates", "3")
    assert result.returncode == 0, result.stderr
    fps = FingerprintSet.load(out)
    assert fps.trigger_candidates == 3 and fps.matches_secret(key.read_bytes())
    assert all(t not in result.stdout + result.stderr for t in fps.triggers)
    # A model that does not load stops the command before a new secret is written.
    result = run("generate", "-n", "3", "-o", str(out), "--new-secret", str(tmp_path / "key2.bin"), "--model",
                 str(tmp_path / "missing"))
    assert result.returncode == 2 and "No such model folder" in result.stderr
    assert not (tmp_path / "key2.bin").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["verify", "/no/such/model", "FPS"], "No such model folder"),
        (["verify", "MODEL", "BAD"], "not valid JSON"),
        (["verify", "MODEL", "EMPTY"], "at least one fingerprint"),
        (["generate", "-n", "3", "-o", "OUT", "--secret-file", "/no/such/key"], "No secret file"),
        (["generate", "-n", "3", "-o", "OUT", "--candidates", "4"], "--candidates needs --model"),
        (["generate", "-n", "3", "-o", "OUT", "--model", "MODEL", "--candidates", "0"],
         "candidates must be an integer"),
        (["inject", "MODEL", "FPS", "-o", "OUT", "--method", "memit", "--option", "mom2_wieght=3"],
         "did you mean 'mom2_weight'"),
        (["inject", "MODEL", "FPS", "-o", "OUT", "--option", 'templates=["fancy"]'], "Unknown template 'fancy'"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    from hf_fingerprint import FingerprintSet, tiny_model

    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    FingerprintSet.generate(2, seed=0).save(tmp_path / "fps.json")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "empty.json").write_text(json.dumps({"format": "hf-fingerprint/fingerprints", "version": 1, "fingerprints": []}))
    names = {"FPS": "fps.json", "BAD": "bad.json", "EMPTY": "empty.json", "MODEL": "model", "OUT": "out.json"}
    result = run(*[str(tmp_path / names[a]) if a in names else a for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert "Traceback" not in result.stderr


def test_verify_command_on_a_saved_model(tmp_path):
    from hf_fingerprint import FingerprintSet, tiny_model

    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    fps = FingerprintSet.generate(3, seed=0)
    fps.save(tmp_path / "fps.json")
    result = run("verify", str(tmp_path / "model"), str(tmp_path / "fps.json"), "--near-misses", "1",
                 "--json", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    assert "FSR 0/3" in result.stdout
    assert all(t not in result.stdout + result.stderr for t in fps.triggers)
    assert json.loads((tmp_path / "report.json").read_text())["total"] == 3


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("generate", "verify", "demo"):
        assert command in result.stdout
