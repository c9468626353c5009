"""The orphan reconciler's decisions (pure, table-tested), one pass against an injected hub
and cluster, and its entry in the hub's config. The pass against a real hub and the emulated
cluster is tests/integration/test_orphan_pods.py."""

import json
import sys

import pytest
from traitlets.config import Config

from llmspawner import hubconfig
from llmspawner import reconciler as rec
from llmspawner.hubconfig import REPO_PROFILES

GRACE = 120.0
NOW = 10_000.0


def pod(name, user, server="", created=0.0, uid=None, deleting=False):
    return rec.ServerPod(
        name=name, uid=uid or f"uid-{name}", user=user, server=server, created=created,
        deleting=deleting,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("case", "the_pod", "active", "first_seen", "deleted", "candidate"),
    [
        ("ready or pending server: never", pod("a", "alice"), {("alice", "")}, {}, False, False),
        (
            "ready server, even if once a candidate",
            pod("a", "alice"),
            {("alice", "")},
            {"uid-a": 0.0},
            False,
            False,
        ),
        ("named server active", pod("a", "alice", "gpu"), {("alice", "gpu")}, {}, False, False),
        ("other server of the user active", pod("a", "alice", "gpu"), {("alice", "")}, {}, False,
         True),
        ("first seen now: only remembered", pod("a", "bob"), set(), {}, False, True),
        ("candidate for less than grace", pod("a", "bob"), set(), {"uid-a": NOW - 60}, False,
         True),
        ("candidate for grace, old pod", pod("a", "bob"), set(), {"uid-a": NOW - GRACE}, True,
         True),
        (
            "candidate for grace, but a young pod",
            pod("a", "bob", created=NOW - 10),
            set(),
            {"uid-a": NOW - GRACE},
            False,
            True,
        ),
        ("being deleted already", pod("a", "bob", deleting=True), set(), {"uid-a": 0.0}, False,
         False),
    ],
)  # fmt: skip
def test_plan(case, the_pod, active, first_seen, deleted, candidate):
    delete, candidates = rec.plan([the_pod], active, first_seen, now=NOW, grace=GRACE)
    assert (the_pod in delete) is deleted, case
    assert (the_pod.uid in candidates) is candidate, case
    if candidate:
        assert candidates[the_pod.uid] == first_seen.get(the_pod.uid, NOW), case


def test_plan_forgets_pods_that_are_gone():
    _, candidates = rec.plan([], set(), {"uid-x": 1.0}, now=NOW, grace=GRACE)
    assert candidates == {}


def test_server_pod_reads_kubespawners_annotations():
    body = {
        "metadata": {
            "name": "jupyter-bob-2eb--gpu",
            "uid": "u1",
            "creationTimestamp": "2026-12-01T19:30:00Z",
            "annotations": {
                "hub.jupyter.org/username": "Bob.B",
                "hub.jupyter.org/servername": "gpu",
            },
        }
    }
    p = rec.server_pod(body)
    assert (p.name, p.uid, p.user, p.server, p.deleting) == (
        "jupyter-bob-2eb--gpu", "u1", "Bob.B", "gpu", False,
    )  # fmt: skip
    assert p.created == 1796153400.0
    assert rec.server_pod({"metadata": {"name": "x", "annotations": {}}}) is None
    assert rec.server_pod({"metadata": {"name": "x"}}) is None


def test_active_servers_are_the_keys_of_servers():
    users = [
        {"name": "alice", "servers": {"": {"ready": True}, "gpu": {"pending": "spawn"}}},
        {"name": "bob", "servers": {}},
    ]
    assert rec.active_servers(users) == {("alice", ""), ("alice", "gpu")}


class FakeCore:
    """The two Kubernetes calls a pass makes, recorded (the real ones:
    tests/integration/test_orphan_pods.py)."""

    def __init__(self, pods):
        self.pods = pods
        self.deleted = []
        self.selectors = []

    async def list_namespaced_pod(self, namespace, **kwargs):
        # The emulated API server's own selector code decides what matches.
        from devcluster.selectors import match_labels, parse_label_selector

        self.selectors.append(kwargs["label_selector"])
        reqs = parse_label_selector(kwargs["label_selector"])
        items = [p for p in self.pods if match_labels(reqs, p["metadata"].get("labels"))]
        body = json.dumps({"items": items}).encode()

        class Resp:
            async def read(self):
                return body

        return Resp()

    async def delete_namespaced_pod(self, name, namespace, body, **kwargs):
        self.deleted.append((namespace, name, body.preconditions.uid))


def reconciler(core, **kwargs) -> rec.Reconciler:
    """A reconciler of namespace ``ns`` against ``core`` (a :class:`FakeCore`) and a hub
    at ``http://hub/hub/api`` reached with token ``secret``."""

    async def core_factory():
        return core

    return rec.Reconciler("http://hub/hub/api", "secret", "ns", core=core_factory, **kwargs)


def hub_fetch(pages, user_models, calls):
    async def fetch(method, url, headers):
        calls.append(url)
        assert headers["Authorization"] == "token secret"
        if "/users?" in url:
            offset = int(url.split("offset=")[1].split("&")[0])
            return 200, json.dumps(pages[offset])
        name = url.rsplit("/", 1)[1]
        return (200, json.dumps(user_models[name])) if name in user_models else (404, "")

    return fetch


def api_pod(name, user, uid, **labels):
    return {
        "metadata": {
            "name": name,
            "uid": uid,
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "labels": {"component": "singleuser-server", **labels},
            "annotations": {"hub.jupyter.org/username": user},
        }
    }


async def test_a_pass_deletes_only_orphans_past_grace_with_a_uid_precondition(caplog):
    core = FakeCore([api_pod("jupyter-alice", "alice", "a1"), api_pod("jupyter-bob", "bob", "b1")])
    pages = {
        0: {"items": [{"name": "carol", "servers": {}}], "_pagination": {"next": {"offset": 1}}},
        1: {"items": [{"name": "alice", "servers": {"": {}}}], "_pagination": {"next": None}},
    }
    calls = []
    clock = [1796083200.0 + 1000]

    r = reconciler(
        core,
        grace=5,
        fetch=hub_fetch(pages, {"bob": {"name": "bob", "servers": {}}}, calls),
        clock=lambda: clock[0],
    )
    assert await r.reconcile() == []  # bob's pod is only a candidate now
    assert any("state=active" in c for c in calls)
    clock[0] += 5
    with caplog.at_level("WARNING", logger="llmspawner.reconciler"):
        deleted = await r.reconcile()
    assert [p.name for p in deleted] == ["jupyter-bob"]
    assert core.deleted == [("ns", "jupyter-bob", "b1")]
    assert "Deleted orphan pod jupyter-bob (user bob, default server) in ns" in caplog.text
    assert r.candidates == {}


def test_the_selector_names_the_hubs_release():
    assert rec.pod_selector(None) == "component=singleuser-server"
    assert rec.pod_selector({"app": "jupyterhub", "heritage": "jupyterhub"}) == (
        "component=singleuser-server"
    )
    # z2jh 4.x's common labels (both set from Release.Name).
    z2jh = {"app": "jupyterhub", "release": "jhub", "app.kubernetes.io/instance": "jhub"}
    assert rec.pod_selector(z2jh) == (
        "component=singleuser-server,release=jhub,app.kubernetes.io/instance=jhub"
    )


async def test_a_second_hubs_pods_in_the_namespace_are_not_orphans():
    """Review finding 3: two releases in one namespace; this hub (release ``jhub``) knows no
    server for either pod, and deletes only its own release's pod."""
    mine = rec.pod_selector({"release": "jhub", "app.kubernetes.io/instance": "jhub"})
    core = FakeCore(
        [
            api_pod(
                "jupyter-bob", "bob", "b1", release="jhub", **{"app.kubernetes.io/instance": "jhub"}
            ),
            api_pod(
                "jupyter-carol",
                "carol",
                "c1",
                release="lab2",
                **{"app.kubernetes.io/instance": "lab2"},
            ),
        ]
    )
    pages = {0: {"items": [], "_pagination": {"next": None}}}

    r = reconciler(
        core,
        grace=0,
        # carol is a user of both hubs, with no server on this one.
        fetch=hub_fetch(pages, {u: {"name": u, "servers": {}} for u in ("bob", "carol")}, []),
        clock=lambda: 1796083200.0 + 1000,
        selector=mine,
    )
    await r.reconcile()
    assert core.selectors[0] == mine
    assert core.deleted == [("ns", "jupyter-bob", "b1")]


async def test_a_pass_re_asks_the_hub_before_deleting():
    core = FakeCore([api_pod("jupyter-bob", "bob", "b1")])
    pages = {0: {"items": [], "_pagination": {"next": None}}}

    r = reconciler(
        core,
        grace=0,
        # bob's start began between the list and the deletion: his server is pending now.
        fetch=hub_fetch(pages, {"bob": {"name": "bob", "servers": {"": {"pending": "spawn"}}}}, []),
    )
    assert await r.reconcile() == []
    assert core.deleted == []


async def test_a_pass_changes_nothing_when_the_hub_cannot_be_asked():
    core = FakeCore([api_pod("jupyter-bob", "bob", "b1")])

    async def fetch(method, url, headers):
        return 503, "down"

    r = reconciler(core, grace=0, fetch=fetch)
    with pytest.raises(rec.ReconcileError, match="HTTP 503"):
        await r.reconcile()
    assert core.deleted == []


def test_service_entry_and_least_scopes():
    service, role = rec.reconciler_service(
        interval=60,
        grace=120,
        environment={"KUBECONFIG": "/k"},
        api_url="http://localhost:8081/hub/api",
    )
    assert service == {
        "name": "pod-reconciler",
        "command": [
            sys.executable,
            "-m",
            "llmspawner.reconciler",
            "--interval=60",
            "--grace=120",
            "--url=http://localhost:8081/hub/api",
        ],
        "environment": {"KUBECONFIG": "/k"},
    }
    assert role["scopes"] == ["list:users", "read:servers"]
    assert role["services"] == ["pod-reconciler"]
    for bad in ({"interval": 0, "grace": 1}, {"interval": 1, "grace": -1}):
        with pytest.raises(ValueError, match="pod reconciler"):
            rec.reconciler_service(**bad)


def test_the_hub_config_adds_it_with_the_clusters_credentials():
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "LLMSPAWNER_NAMESPACE": "jhub",
        "LLMSPAWNER_RECONCILE_GRACE": "30",
        "LLMSPAWNER_HUB_API_URL": "http://localhost:8081/hub/api",
        "OTHER": "x",
    }
    # As z2jh's jupyterhub_config.py sets them before hub.extraConfig runs.
    c.KubeSpawner.common_labels = {"app": "jupyterhub", "release": "jhub"}
    hubconfig.configure(c, env)
    services = {s["name"]: s for s in c.JupyterHub.services}
    entry = services["pod-reconciler"]
    assert "--grace=30" in entry["command"] and "--interval=60" in entry["command"]
    assert entry["command"][-2] == "--url=http://localhost:8081/hub/api"
    assert entry["command"][-1] == "--selector=component=singleuser-server,release=jhub"
    assert entry["environment"]["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert "OTHER" not in entry["environment"]
    from llmspawner.settings import LLMPlatform

    assert LLMPlatform.from_env(entry["environment"]).namespace == "jhub"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["pod-reconciler"]["scopes"] == ["list:users", "read:servers"]


def test_the_hub_config_leaves_it_out_with_interval_0_and_names_a_bad_value():
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    hubconfig.configure(c, {"LLMSPAWNER_RECONCILE_INTERVAL": "0"})
    assert "pod-reconciler" not in {s["name"] for s in c.JupyterHub.services}
    c = Config()
    c.LLMPlatform.profiles_dir = str(REPO_PROFILES)
    with pytest.raises(hubconfig.ConfigError, match="LLMSPAWNER_RECONCILE_GRACE"):
        hubconfig.configure(c, {"LLMSPAWNER_RECONCILE_GRACE": "soon"})


def test_main_refuses_without_token_or_namespace(capsys):
    assert rec.main(["--url=http://hub/hub/api"], env={}) == 2
    assert "JUPYTERHUB_API_TOKEN" in capsys.readouterr().err


async def test_a_pod_of_a_user_the_hub_does_not_know_is_left_alone(caplog):
    """A rename (JupyterHub allows it while the server runs; the pod keeps the old name in its
    annotation) or a token that cannot see the user answers 404: never a deletion."""
    core = FakeCore([api_pod("jupyter-alice", "alice", "a1")])
    pages = {0: {"items": [{"name": "alice2", "servers": {"": {}}}], "_pagination": {}}}

    r = reconciler(
        core,
        grace=0,
        fetch=hub_fetch(pages, {}, []),
    )
    with caplog.at_level("WARNING", logger="llmspawner.reconciler"):
        assert await r.reconcile() == [] and await r.reconcile() == []
    assert core.deleted == []
    assert caplog.text.count("the hub has no user 'alice'") == 1


async def test_a_user_model_without_servers_fails_the_pass():
    """Without read:servers the models have no ``servers``: not read as "no servers"."""
    core = FakeCore([api_pod("jupyter-bob", "bob", "b1")])
    pages = {0: {"items": [{"name": "bob"}], "_pagination": {}}}

    r = reconciler(
        core,
        grace=0,
        fetch=hub_fetch(pages, {"bob": {"name": "bob"}}, []),
    )
    with pytest.raises(rec.ReconcileError, match="read:servers"):
        await r.reconcile()
    assert core.deleted == []
