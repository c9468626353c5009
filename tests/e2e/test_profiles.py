"""GPU profiles on the emulated cluster: a full profile waits with a plain sentence and starts
by itself when a slice frees; bad options are refused before anything is created."""

import re

import pytest

from llmspawner_dev.login import HubSession

from .polling import wait_until

pytestmark = pytest.mark.e2e

WAITING = (
    "Waiting for a free ½ GPU slice (nvidia.com/gpu) for profile '½ GPU — 7B with QLoRA': all "
    "of them are in use. Your server starts by itself as soon as one is free."
)


@pytest.fixture
def users(stack):
    sessions = {}

    def login(name: str) -> HubSession:
        sessions[name] = HubSession.login(stack.hub_url, name)
        return sessions[name]

    yield login
    for session in sessions.values():
        session.stop_and_close()


def profile_block(form_html: str, slug: str) -> str:
    """The text of one profile's <label> in kubespawner's spawn form."""
    match = re.search(rf'<label for="profile-item-{slug}".*?</label>', form_html, flags=re.DOTALL)
    assert match, f"profile {slug} is not in the form"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(0))).replace("&#39;", "'")


def pods_on(stack, node: str) -> list[str]:
    with stack.kube() as kube:
        return sorted(
            p["metadata"]["name"]
            for p in kube.list_pods("default")
            if p["spec"].get("nodeName") == node
        )


def test_third_medium_user_waits_then_starts_by_itself(stack, users, timeouts):
    assert pods_on(stack, "gpu-ts2") == [], "another test left a pod on the ½-GPU node"
    carol, dave, erin, frank = (users(n) for n in ("carol", "dave", "erin", "frank"))
    for user in (carol, dave):
        user.start_server("medium")
    for user in (carol, dave):
        user.wait_ready(timeouts.server)
    assert pods_on(stack, "gpu-ts2") == ["jupyter-carol", "jupyter-dave"]

    # The form of someone else says medium is full, and can still be chosen.
    def form_says_full():
        block = profile_block(frank.get("/hub/spawn").text, "medium")
        return block if "Full:" in block else None

    block = wait_until(form_says_full, 10, "the spawn form shows medium as full")
    assert "Full: all 2 slices are in use; choose it to wait for the next free one." in block
    assert "a slice shares the GPU's memory with the other users of that GPU" in block
    assert "Free now: 4 of 4 slices." in profile_block(frank.get("/hub/spawn").text, "small")

    # The third user waits: Pending, with one plain sentence on the progress API.
    assert erin.start_server("medium") == 202
    with stack.kube() as kube:
        pod = wait_until(
            lambda: kube.get_pod("default", "jupyter-erin"), 10, "erin's pod is created"
        )
        assert pod["status"]["phase"] == "Pending"
    messages = [e.get("message", "") for e in erin.progress_events(timeout=8)]
    assert WAITING in messages, messages
    assert not any("nodes are available" in m for m in messages), messages
    assert erin.server_model()["pending"] == "spawn"

    # One of the first two stops: the third starts without anything else being done.
    carol.stop_server()
    erin.wait_ready(timeouts.server)
    assert pods_on(stack, "gpu-ts2") == ["jupyter-dave", "jupyter-erin"]


def test_unknown_profile_is_400_and_creates_nothing(stack, users):
    grace = users("grace")
    response = grace.api("POST", "/users/grace/server", json={"profile": "huge"})
    assert response.status_code == 400
    assert response.json()["message"] == (
        "Unknown profile 'huge'; valid profiles: cpu, small, medium, large"
    )
    response = grace.api("POST", "/users/grace/server", json={"profile": "cpu", "gpus": 8})
    assert response.status_code == 400
    assert response.json()["message"] == "Unknown option 'gpus'; the only option is 'profile'"
    assert grace.server_model() is None
    with stack.kube() as kube:
        assert kube.get_pod("default", "jupyter-grace") is None


def test_no_options_starts_the_default_profile(stack, users, timeouts):
    """What the admin panel's "start server" sends: no options at all."""
    heidi = users("heidi")
    heidi.start_server(None)
    heidi.wait_ready(timeouts.server)
    with stack.kube() as kube:
        pod = kube.get_pod("default", "jupyter-heidi")
    container = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert pod["spec"].get("nodeSelector") in (None, {})
    assert pod["spec"]["nodeName"] == "cpu-1"
