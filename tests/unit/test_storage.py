"""The slug function and the per-user storage mounts (pure)."""

import re

import pytest

from llmspawner import storage

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# Pinned: a slug names a user's folder on the shared PVC, so it must never change between
# releases. Changing a value here orphans that user's files.
PINNED = [
    ("alice", "alice"),
    ("bob", "bob"),
    ("carol-2", "carol-2"),
    ("Alice", "alice---3bc51062"),
    ("alice@example.com", "alice-example-com---ff8d9819"),
    (".", "x---cdb4ee2a"),
    ("..", "x---5ec1f7e7"),
    ("a--b", "a-b---90827a2e"),
    ("x" * 70, "x" * 21 + "---c71bd109"),
    ("Ünïcode", "n-code---00b24be8"),
    ("bob smith", "bob-smith---7e50351d"),
    ("1password", "x-1password---d58fc8da"),
]


@pytest.mark.parametrize(("name", "slug"), PINNED)
def test_user_slug_pinned(name, slug):
    assert storage.user_slug(name) == slug


@pytest.mark.parametrize(("name", "_"), PINNED)
def test_user_slug_is_dns_label(name, _):
    slug = storage.user_slug(name)
    assert DNS_LABEL.match(slug), slug
    assert slug not in ("", ".", "..")


def test_user_slug_distinct_for_distinct_names():
    names = [n for n, _ in PINNED] + ["alice-", "-alice", "ALICE", "alice.", "a-b", "a_b"]
    slugs = [storage.user_slug(n) for n in names]
    assert len(set(slugs)) == len(names)


def test_user_slug_refuses_empty():
    with pytest.raises(ValueError, match="must not be empty"):
        storage.user_slug("")


def test_paths():
    assert storage.user_subpath("alice") == "users/alice"
    assert storage.user_home("alice") == "/storage/users/alice"
    assert storage.user_home("Alice") == "/storage/users/alice---3bc51062"
    assert storage.models_path() == "/storage/models"


def test_build_user_storage():
    s = storage.build_user_storage(username="bob", claim_name="llm-storage")
    assert s.home == "/storage/users/bob"
    assert s.volumes == [
        {"name": "llm-storage", "persistentVolumeClaim": {"claimName": "llm-storage"}}
    ]
    assert s.volume_mounts == [
        {"name": "llm-storage", "mountPath": "/storage/users/bob", "subPath": "users/bob"},
        {
            "name": "llm-storage",
            "mountPath": "/storage/models",
            "subPath": "models",
            "readOnly": True,
        },
    ]


def test_build_user_storage_returns_fresh_lists():
    a = storage.build_user_storage(username="bob", claim_name="llm-storage")
    a.volume_mounts.append({"name": "x"})
    b = storage.build_user_storage(username="bob", claim_name="llm-storage")
    assert len(b.volume_mounts) == 2


@pytest.mark.parametrize("claim", ["", "Llm", "llm_storage", "-llm", "x" * 64])
def test_build_user_storage_refuses_bad_claim(claim):
    with pytest.raises(ValueError, match="is not a valid PVC name"):
        storage.build_user_storage(username="bob", claim_name=claim)


def test_owner_init_container():
    container = storage.build_owner_init_container(
        username="alice", image="img:1", uid=1000, gid=100
    )
    assert container == {
        "name": "llm-storage-owner",
        "image": "img:1",
        "command": [
            "sh",
            "-c",
            'test "$(stat -c %u:%g "$1")" = "$2" || chown "$2" "$1"',
            "sh",
            "/mnt/user-folder",
            "1000:100",
        ],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "volumeMounts": [
            {"name": "llm-storage", "mountPath": "/mnt/user-folder", "subPath": "users/alice"}
        ],
    }


@pytest.mark.parametrize(
    ("uid", "gid", "message"),
    [
        (-1, 100, "uid must be a whole number >= 0, not -1"),
        (1000, "100", "gid must be a whole number >= 0, not '100'"),
    ],
)
def test_owner_init_container_refuses_bad_ids(uid, gid, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        storage.build_owner_init_container(username="alice", image="i", uid=uid, gid=gid)
