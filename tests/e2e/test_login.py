"""Login through the OIDC provider with groups: who may log in, who is admin, one name per
person (usernames are normalised by the hub). A second stack, configured as a real deployment
would be: no allow_all, allowed and admin groups from the groups claim."""

import pytest

from llmspawner_dev.login import HubSession, LoginError
from llmspawner_dev.stack import DevStack

from .conftest import STACK_TIMEOUT

pytestmark = pytest.mark.e2e

USERS = (
    {"sub": "alice", "preferred_username": "alice", "groups": ["users"]},
    # The same person through another account of the provider, name in other case.
    {"sub": "alice-sso", "preferred_username": "Alice", "groups": ["users"]},
    {"sub": "bob", "preferred_username": "bob", "groups": ["users"]},
    {"sub": "root", "preferred_username": "root", "groups": ["users", "ml-admins"]},
    {"sub": "mallory", "preferred_username": "mallory", "groups": ["guests"]},
    {"sub": "nogroups", "preferred_username": "nogroups"},
)


@pytest.fixture(scope="module")
def login_stack(tmp_path_factory):
    stack = DevStack(
        tmp_path_factory.mktemp("login-stack"),
        timeout=STACK_TIMEOUT,
        users=USERS,
        hub_env={
            "LLMSPAWNER_ALLOW_ALL": "0",
            "LLMSPAWNER_OIDC_USERNAME_CLAIM": "preferred_username",
            "LLMSPAWNER_ALLOWED_GROUPS": "users",
            "LLMSPAWNER_ADMIN_GROUPS": "ml-admins",
            "LLMSPAWNER_CULL": "0",
        },
    )
    try:
        stack.start()
    except Exception as e:
        pytest.fail(f"the login stack did not start: {e}\n{stack.log_tails(40)}")
    yield stack
    stack.stop()


def login(stack, sub: str, hub_name: str | None = None) -> HubSession:
    """Log in as the provider's user ``sub``; the hub knows them as ``hub_name``."""
    session = HubSession(stack.hub_url, sub)
    session.oidc_login()
    session.username = hub_name or sub
    session.create_token()
    return session


def test_user_in_allowed_group_gets_in(login_stack):
    with login(login_stack, "bob") as bob:
        me = bob.api("GET", "/user").json()
        assert (me["name"], me["admin"], me["groups"]) == ("bob", False, ["users"])


@pytest.mark.parametrize("sub", ["mallory", "nogroups"])
def test_user_in_no_allowed_group_gets_the_403_page(login_stack, sub):
    with HubSession(login_stack.hub_url, sub) as session:
        response = session.oidc_callback()
        assert response.status_code == 403
        # The hub's error page, with the authenticator's refusal (JupyterHub 6 puts the
        # sentence in the heading, 5.x in the paragraph below "403 : Forbidden").
        assert "<h1>403 : " in response.text
        assert (
            "Sorry, you are not currently authorized to use this hub. Please contact "
            "the hub administrator." in response.text
        )
        with pytest.raises(LoginError, match="oauth_callback answered 403"):
            session.oidc_login()


def test_admin_group_member_is_admin_and_others_get_403(login_stack, timeouts):
    with login(login_stack, "root") as root, login(login_stack, "bob") as bob:
        assert root.api("GET", "/user").json()["admin"] is True
        users = root.api("GET", "/users")
        assert users.status_code == 200
        assert {"root", "bob"} <= {u["name"] for u in users.json()}
        assert bob.api("GET", "/users").status_code == 403
        assert root.get("/hub/admin").status_code == 200
        assert bob.get("/hub/admin").status_code == 403
        # The admin panel's actions, through the same REST API it uses.
        assert root.api("POST", "/users/carol").status_code == 201
        assert root.api("POST", "/users/bob/server").status_code in (201, 202)  # no options
        bob.wait_ready(timeouts.server)
        with login_stack.kube() as kube:
            pod = kube.get_pod("default", "jupyter-bob")
        assert pod["spec"]["nodeName"] == "cpu-1"  # the default profile: CPU only
        assert root.api("DELETE", "/users/bob/server").status_code in (202, 204)
        bob.stop_server()  # waits until the hub has no server for bob
        assert root.api("DELETE", "/users/carol").status_code == 204
        assert bob.api("POST", "/users/dave").status_code == 403


def test_alice_and_Alice_are_one_user_with_one_folder(login_stack, timeouts):
    with login(login_stack, "alice") as alice, login(login_stack, "alice-sso", "alice") as upper:
        assert alice.api("GET", "/user").json()["name"] == "alice"
        assert upper.api("GET", "/user").json()["name"] == "alice"
        upper.start_server("cpu")
        upper.wait_ready(timeouts.server)
        with login_stack.kube() as kube:
            pod = kube.get_pod("default", "jupyter-alice")
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_EXPERIMENT_NAME"] == "alice-experiments"
        assert [m.get("subPath") for m in container["volumeMounts"]] == [
            "users/alice",
            "models",
            None,  # /dev/shm
        ]
        upper.stop_server()


def _hub_log(stack) -> str:
    return (stack.logs_dir / "hub.log").read_text(errors="replace")


def test_a_login_without_groups_claim_is_an_error_when_groups_are_required(login_stack):
    with HubSession(login_stack.hub_url, "nogroups") as session:
        assert session.oidc_callback().status_code == 403
    errors = [line for line in _hub_log(login_stack).splitlines() if line.startswith("[E ")]
    assert [line for line in errors if "no 'groups' claim" in line and "allowed_groups" in line]


def test_a_login_without_groups_claim_is_quiet_without_group_rules(stack):
    # Any name typed on the dev provider's page has only the claims sub and email.
    with HubSession.login(stack.hub_url, "zed-no-groups") as zed:
        assert zed.api("GET", "/user").json()["groups"] == []
    log = _hub_log(stack)
    assert "zed-no-groups" in log  # the login is in this log
    noisy = [
        line
        for line in log.splitlines()
        if line.startswith(("[E ", "[W ")) and ("groups" in line or "auth_state" in line)
    ]
    assert noisy == []


def test_the_stack_asks_the_proxy_for_the_hub_only_once_the_hub_listens(login_stack):
    proxy_log = (login_stack.logs_dir / "proxy.log").read_text(errors="replace")
    assert "GET /hub/health" not in proxy_log  # CHP logs only failed requests at info level
    assert "Failed to get custom error page" not in proxy_log
