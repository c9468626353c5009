"""The dev stack gives the users' folders that older dev stacks left root-owned to the dev uid."""

import os

import pytest

from llmspawner_dev.hubconfig import DEV_GID, DEV_UID
from llmspawner_dev.stack import give_back_root_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root can change an owner")


def test_root_files_of_an_old_workdir_go_to_the_dev_user(tmp_path):
    users = tmp_path / "users"
    (users / "alice" / ".local" / "share").mkdir(parents=True)
    (users / "alice" / ".local" / "share" / "x.json").write_text("{}")
    (users / "bob").mkdir()
    (users / "bob" / "mine.txt").write_text("bob's")
    os.chown(users / "bob", DEV_UID, DEV_GID)
    os.chown(users / "bob" / "mine.txt", 1234, 1234)  # someone else's file: left alone

    assert give_back_root_files(users, DEV_UID, DEV_GID) == 4
    for path in ("alice", "alice/.local", "alice/.local/share", "alice/.local/share/x.json"):
        st = (users / path).stat()
        assert (st.st_uid, st.st_gid) == (DEV_UID, DEV_GID), path
    assert (users / "bob" / "mine.txt").stat().st_uid == 1234
    assert users.stat().st_uid == 0  # the PVC's users/ folder stays the cluster's
    assert give_back_root_files(users, DEV_UID, DEV_GID) == 0  # a second start changes nothing


def test_no_users_folder_yet(tmp_path):
    assert give_back_root_files(tmp_path / "users", DEV_UID, DEV_GID) == 0
