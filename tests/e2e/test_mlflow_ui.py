"""The MLflow UI behind the hub's login, in Chromium, on the dev stack: the hub service
``mlflow`` at ``/services/mlflow/``. A logged-out browser lands on the hub's login; a logged-in
user lands on MLflow's UI, which lists the experiments and tells who is logged in. A token
in the hub's OAuth cookie is what MLflow checks (docs/mlflow.md)."""

from __future__ import annotations

import httpx
import pytest

from devcluster.testing import wait_until

from .browser import chromium, oidc_login

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def routed(stack):
    """The stack, once the hub has added the proxy's route of ``/services/mlflow/`` (the
    stack is ready when the hub answers, which can be a moment before its service routes)."""

    def mlflow_through_proxy():
        return httpx.get(f"{stack.hub_url}/services/mlflow/health", timeout=10).status_code == 200

    wait_until(
        mlflow_through_proxy, 60, "MLflow behind the hub's proxy", 0.5, ignore=(httpx.HTTPError,)
    )
    return stack


@pytest.fixture(scope="module")
def board(routed):
    """A shared experiment, made by MLflow's admin, that every user can see."""
    stack = routed
    r = stack.mlflow_request("POST", "experiments/create", json={"name": "shared-board"})
    assert r.status_code in (200, 400), r.text  # 400: RESOURCE_ALREADY_EXISTS
    return "shared-board"


def test_a_logged_out_browser_lands_on_the_hub_login(routed):
    stack = routed
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{stack.hub_url}/services/mlflow/")
        page.wait_for_url(f"{stack.hub_url}/hub/login**", timeout=30_000)
        assert "/hub/login" in page.url
        # No MLflow cookie was set: MLflow was never reached as anyone.
        names = {c["name"] for c in page.context.cookies()}
        assert "llmspawner-mlflow-token" not in names


def test_a_logged_in_user_lands_on_mlflows_ui(stack, board):
    with chromium() as browser:
        page = browser.new_page()
        oidc_login(page, stack.hub_url, "bob")
        page.goto(f"{stack.hub_url}/services/mlflow/#/experiments")
        page.wait_for_url(f"{stack.hub_url}/services/mlflow/**", timeout=30_000)
        page.get_by_text(board).first.wait_for(timeout=60_000)
        cookies = {c["name"]: c for c in page.context.cookies()}
        token = cookies["llmspawner-mlflow-token"]
        assert (token["path"], token["httpOnly"]) == ("/services/mlflow/", True)
        # The UI's own API calls carry the cookie: MLflow knows the user as bob.
        me = page.evaluate(
            "fetch('/services/mlflow/api/2.0/mlflow/users/current').then(r => r.json())"
        )
        assert me["user"]["username"] == "bob"
        page.screenshot(path=str(stack.workdir / "mlflow-ui.png"))
