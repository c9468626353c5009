"""The hub's login: GenericOAuthenticator that re-checks the IdP's groups at each auth refresh.

JupyterHub calls :meth:`~jupyterhub.auth.Authenticator.refresh_user` for a user's requests
once ``Authenticator.auth_refresh_age`` seconds (default 300) have passed since the last
refresh, and before every spawn (``refresh_pre_spawn``, on by default in OAuthenticator when
auth state is enabled). OAuthenticator 17's ``refresh_user`` (``oauthenticator/oauth2.py``)
asks the provider again (userinfo with the stored access token, else the refresh token) and
returns a fresh auth model with the user's groups, but it never re-runs ``check_allowed``:
a user removed from the allowed group in the IdP would keep their session, their server's
token and every service behind the hub. And it lets a provider outage (connection refused,
a 5xx) escape as an exception, which turns every request of the user into an error.

:class:`LLMOAuthenticator` adds both rules:

- **removed from the allowed groups** (or blocked): the refresh refuses with 403 naming the
  reason. JupyterHub then treats the request as not logged in (``BaseHandler.prepare``): the
  hub's pages send the user to log in again (which the provider's groups then refuse), the
  hub's API answers 403 to their tokens, so no new server, and the hub services (the queue,
  MLflow's auth) find no user for their tokens (``HubAuth.user_for_token``: 403 → no user;
  services cache a token's user for ``HubAuth.cache_max_age``, 5 minutes by default);
- **provider unreachable**: a warning is logged and the user's session goes on unchanged
  until the next refresh (``True``: "up to date");
- **no groups claim** in the provider's answer (an IdP that sends none, like the dev
  stack's): the user has no groups, as with OAuthenticator, but this is an ERROR only when a
  login rule needs groups (``allowed_groups`` or ``admin_groups``); otherwise a debug line.
  OAuthenticator logs an ERROR at every such login (``get_user_groups``).

Auth refresh needs auth state (``enable_auth_state``, which needs ``JUPYTERHUB_CRYPT_KEY``);
:func:`llmspawner.hubconfig.configure_auth` turns it on when the key is there.
Entry point: ``c.JupyterHub.authenticator_class = "llm-oauth"``; it reads the
``c.GenericOAuthenticator`` settings.
"""

from __future__ import annotations

import asyncio
from functools import reduce

from jupyterhub.utils import maybe_future
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError

__all__ = ["LLMOAuthenticator", "claim", "provider_unavailable"]


def claim(auth_state: dict, key: str) -> object | None:
    """The value at the dotted ``key`` (``"oauth_user.groups"``) of ``auth_state``, or
    ``None`` when a part of the path is missing or not a mapping (OAuthenticator's lookup in
    ``get_user_groups``)."""
    try:
        return reduce(dict.get, key.split("."), auth_state)
    except TypeError:
        return None


def provider_unavailable(error: BaseException) -> bool:
    """Whether ``error`` of a request to the identity provider means it is unreachable or
    failing (network error, timeout, tornado's 599, any 5xx), not that the user's tokens are
    bad (a 4xx, which OAuthenticator handles itself)."""
    if isinstance(error, HTTPClientError):
        return error.code >= 500
    return isinstance(error, OSError | asyncio.TimeoutError | TimeoutError)


class LLMOAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator whose auth refresh re-checks who may log in (see the module
    docstring). Configured as ``c.GenericOAuthenticator`` is."""

    async def get_user_groups(self, auth_state: dict) -> set[str]:
        """The user's groups from ``auth_state`` (OAuthenticator's rule; called when
        ``manage_groups`` is on); a missing groups claim gives no groups.

        Args:
            auth_state: OAuthenticator's auth state (``oauth_user`` = the userinfo/ID token
                claims, ``access_token``, ...).

        Returns:
            The group names. Without the ``auth_state_groups_key`` claim: an empty set, logged
            as an ERROR naming the claim only if ``allowed_groups`` or ``admin_groups`` is set
            (the user then cannot get in through a group), else at debug level.
        """
        key = self.auth_state_groups_key
        if isinstance(key, str) and claim(auth_state, key) is None:
            if self.allowed_groups or self.admin_groups:
                self.log.error(
                    "The identity provider sent no %r claim (auth_state_groups_key %s) for a "
                    "login, but allowed_groups/admin_groups need it: the user has no groups. "
                    "Available keys: %s",
                    key.rsplit(".", 1)[-1],
                    key,
                    sorted(auth_state.get(key.split(".")[0]) or auth_state),
                )
            else:
                self.log.debug("No %s claim in the login's auth state: no groups", key)
            return set()
        return await super().get_user_groups(auth_state)

    async def refresh_user(self, user, handler=None, **kwargs):
        """OAuthenticator's refresh, then the login rules on its result.

        Returns:
            ``True`` (nothing to update, or the provider is unreachable: logged), ``False``
            (the user must log in again: OAuthenticator's verdict on their tokens), or the
            fresh auth model (groups updated by ``manage_groups``).

        Raises:
            tornado.web.HTTPError: 403 when the provider's answer no longer allows the user
                (not in ``allowed_groups``/``allowed_users``, not an admin, or blocked).
        """
        try:
            refreshed = await super().refresh_user(user, handler, **kwargs)
        except Exception as e:
            if not provider_unavailable(e):
                raise
            self.log.warning(
                "Identity provider unavailable while refreshing %s's login (%s); their session "
                "is kept until the next refresh",
                user.name,
                e,
            )
            return True
        if isinstance(refreshed, dict):
            name = user.name
            blocked = not await maybe_future(self.check_blocked_users(name, refreshed))
            if blocked or not await maybe_future(self.check_allowed(name, refreshed)):
                groups = ", ".join(sorted(refreshed.get("groups") or [])) or "none"
                self.log.warning(
                    "%s is no longer allowed by the identity provider (groups: %s); access "
                    "refused until they are allowed again",
                    name,
                    groups,
                )
                raise web.HTTPError(
                    403,
                    f"{name} is no longer allowed to use this hub (the identity provider's "
                    "groups changed); ask an administrator for access",
                )
        return refreshed
