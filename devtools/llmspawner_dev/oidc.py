"""The dev stack's OIDC provider: ``oidc-provider-mock`` with a page that works offline.

oidc-provider-mock 0.3 (https://github.com/geigerzaehler/oidc-provider-mock) renders its
login page from Jinja templates whose base loads Pico CSS from a CDN (unstyled offline) and
labels the username box only with the placeholder ``sub``. Its public ``init_app(app, ...)``
adds the provider to any Flask app, and Flask looks templates up in the app's own folder
before a blueprint's (https://flask.palletsprojects.com/en/stable/blueprints/#templates), so
this module builds the provider on a Flask app whose ``oidc_page/templates/`` replace
``_base.html`` (a local stylesheet, ``oidc_page/static/oidc.css``, served by the app) and
``authorization_form.html`` (the same form with a ``<label>`` for the username); the
provider's code is not changed.

Run as ``python -m llmspawner_dev.oidc --host H --port P [--user-claims JSON]...``, the
options of ``python -m oidc_provider_mock`` that the dev stack uses
(:func:`llmspawner_dev.parts.oidc_command`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

#: The templates and the stylesheet that replace the CDN-styled page.
PAGE_DIR = Path(__file__).resolve().with_name("oidc_page")


def users_from_claims(claims_json: Sequence[str]) -> list:
    """``oidc_provider_mock.User`` objects from ``--user-claims`` JSON objects.

    Raises:
        ValueError: an item is not a JSON object with a non-empty string ``sub``.
    """
    from oidc_provider_mock import User

    users = []
    for text in claims_json:
        claims = json.loads(text)
        if (
            not isinstance(claims, dict)
            or not claims.get("sub")
            or not isinstance(claims["sub"], str)
        ):
            raise ValueError(f"--user-claims must be a JSON object with a 'sub': {text}")
        users.append(
            User(sub=claims["sub"], claims={k: v for k, v in claims.items() if k != "sub"})
        )
    return users


def make_app(users: Sequence = ()):
    """The provider (``oidc_provider_mock.init_app``, its defaults otherwise) on a Flask app
    with this module's page templates and ``/static/oidc.css``; returns the WSGI app."""
    import flask
    from oidc_provider_mock import init_app

    app = flask.Flask(
        __name__,
        template_folder=str(PAGE_DIR / "templates"),
        static_folder=str(PAGE_DIR / "static"),
    )
    init_app(app, user_claims=list(users))
    app.secret_key = secrets.token_bytes(16)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--host``, ``--port`` and ``--user-claims``; serve until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m llmspawner_dev.oidc")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--user-claims", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        users = users_from_claims(args.user_claims)
    except ValueError as e:
        parser.error(str(e))
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http on loopback, as the mock does
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(make_app(users), interface="wsgi", host=args.host, port=args.port, log_config=None)


if __name__ == "__main__":
    main()
