"""The dev stack's lasting secrets: made once per workdir (mode 0600), the same at every run."""

import json
import stat

from llmspawner_dev.stack import SECRETS_FILE, workdir_secrets

KEYS = {"service_token", "admin_password", "secret_key", "crypt_key"}


def test_made_once_and_kept(tmp_path):
    path = tmp_path / SECRETS_FILE
    first = workdir_secrets(path)
    assert set(first) == KEYS and all(len(v) >= 32 for v in first.values())
    assert len(first["crypt_key"]) == 64 and int(first["crypt_key"], 16) >= 0  # 32 bytes, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert workdir_secrets(path) == first  # the next run: the same secrets


def test_a_missing_key_is_added_and_the_rest_kept(tmp_path):
    path = tmp_path / SECRETS_FILE
    path.write_text(json.dumps({"admin_password": "kept-password-0123456789"}))
    kept = workdir_secrets(path)
    assert kept["admin_password"] == "kept-password-0123456789"
    assert set(kept) == KEYS
    assert json.loads(path.read_text()) == kept


def test_an_unreadable_file_is_replaced(tmp_path):
    path = tmp_path / SECRETS_FILE
    path.write_text("{not json")
    assert set(workdir_secrets(path)) == KEYS
