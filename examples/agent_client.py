#!/usr/bin/env python3
"""An agent that acts for a user through Strongbox, the way a chat backend does.

The agent is a confidential OAuth 2.1 client of Strongbox (SPEC §11). It never sees the
user's provider tokens: it gets a Strongbox access token for the tools the user approved
and asks Strongbox to run those tools.

  1. discover   GET /.well-known/oauth-authorization-server (RFC 8414), require PKCE S256.
  2. authorize  PKCE verifier + S256 challenge and a random state; a one-shot HTTP server
                on 127.0.0.1 waits for the redirect while the user signs in to Strongbox
                and approves the agent in the browser.
  3. callback   refuse unless `state` matches and `iss` is this issuer (RFC 9207).
  4. exchange   code + verifier at the token endpoint, authenticated with the agent
                secret (HTTP Basic) -> access token, refresh token, granted scope.
  5. use        GET /v1/tools, then POST /v1/tools/{tool}/run with `Bearer <access token>`.
  6. refresh    refresh_token grant -> a new pair; the old refresh token is spent.
The tokens and the secret are never printed; only their lengths, the scope and lifetimes.

Run it (from the repository root):

    cargo run --example dev_provider                     # terminal 1: a local test provider
    cargo run -- --config examples/dev.toml serve        # terminal 2: Strongbox
    cargo run -- --config examples/dev.toml agents add demo-agent \\
        --redirect-uri http://127.0.0.1:8765/callback    # prints the secret once, last line
    STRONGBOX_AGENT_SECRET=... python3 examples/agent_client.py

Needs Python 3.11+ and `requests`. For automated tests, `--authorize-url-file PATH`
writes the authorization URL to PATH instead of opening a browser; the harness signs in,
approves, and lets the redirect reach the callback server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import webbrowser
from dataclasses import dataclass, field, replace
from enum import IntEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlencode, urlsplit

import requests

CALLBACK_PATH = "/callback"
HTTP_TIMEOUT = 30  # seconds, for every request to Strongbox
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # SPEC §11: the shape of a tool name


class Exit(IntEnum):
    """Process exit codes."""

    OK = 0
    FAILED = 1  # network trouble, unexpected answers, bad local setup
    USAGE = 2  # argparse uses 2 for bad arguments as well
    AUTHORIZATION = 3  # denied, timed out, or a redirect that failed the state/iss checks
    TOKEN = 4  # the token endpoint answered an RFC 6749 §5.2 error
    API = 5  # a /v1 call answered an RFC 9457 problem
    USER_ACTION = 6  # the user must visit a URL first (not_connected, reauth_required, ...)


class ClientError(Exception):
    """A failure that ends the run with a message and an exit code."""

    exit_code: Exit = Exit.FAILED


class AuthorizationError(ClientError):
    exit_code = Exit.AUTHORIZATION


class TokenError(ClientError):
    """An RFC 6749 §5.2 error answer from the token endpoint."""

    exit_code = Exit.TOKEN

    def __init__(self, error: str, description: str | None, status: int) -> None:
        text = f"token endpoint refused ({status}): {error}"
        super().__init__(text + (f": {description}" if description else ""))


class ProblemError(ClientError):
    """An RFC 9457 problem document from Strongbox's /v1 API, e.g. policy_denied."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: str | None = None) -> None:
        self.code = str(problem.get("code", "unknown"))  # stable and machine-readable
        self.url = problem.get("url")  # not_connected, reauth_required, insufficient_scope
        self.exit_code = Exit.USER_ACTION if self.url else Exit.API
        text = f"Strongbox answered {status} {self.code}: {problem.get('detail') or problem.get('title', '')}"
        super().__init__(text + (f" (retry after {retry_after} s)" if retry_after else ""))


@dataclass(frozen=True)
class Metadata:
    """The parts of the RFC 8414 authorization server metadata this client uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None


@dataclass(frozen=True)
class Tokens:
    """A token response. repr=False keeps the tokens out of any accidental print/log."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scope: str

    def describe(self) -> str:
        """Lengths and lifetime only: enough to see it worked, useless to a thief."""
        text = f"access token ({len(self.access_token)} chars)"
        if self.expires_in is not None:
            text += f", expires in {self.expires_in} s"
        if self.refresh_token:
            text += f", refresh token ({len(self.refresh_token)} chars)"
        return text


@dataclass(frozen=True)
class Client:
    """A confidential client: its name at Strongbox and its secret."""

    client_id: str
    secret: str = field(repr=False)

    def basic_auth(self) -> str:
        # RFC 6749 §2.3.1: id and secret are each application/x-www-form-urlencoded
        # *before* base64. requests' HTTPBasicAuth skips that step, so build it here.
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.secret)}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def json_object(answer: requests.Response, what: str) -> dict[str, Any]:
    """The answer's JSON object body, or a ClientError naming what sent something else."""
    try:
        body = answer.json()
    except ValueError:  # requests' JSONDecodeError is a ValueError
        body = None
    if not isinstance(body, dict):
        raise ClientError(f"{what} answered {answer.status_code} without a JSON object")
    return body


# --------------------------------------------------------------------------------------
# 1. Discovery


def discover(http: requests.Session, strongbox: str) -> Metadata:
    """Fetch the RFC 8414 metadata and check what this client relies on."""
    url = f"{strongbox}/.well-known/oauth-authorization-server"
    answer = http.get(url, timeout=HTTP_TIMEOUT)
    if answer.status_code != 200:
        raise ClientError(f"{url} answered {answer.status_code}; is this Strongbox, with agent authorization?")
    meta = json_object(answer, url)
    # RFC 8414 §3.3: the issuer must be the URL the metadata was fetched for; otherwise
    # someone else's metadata is being served, and nothing in it can be trusted.
    issuer = meta.get("issuer")
    if not isinstance(issuer, str) or issuer.rstrip("/") != strongbox:
        raise ClientError(f"metadata issuer {issuer!r} is not {strongbox!r}; use --strongbox {issuer}")
    if "S256" not in meta.get("code_challenge_methods_supported", []):
        raise ClientError("the authorization server does not offer PKCE S256")
    try:
        return Metadata(
            issuer=issuer,
            authorization_endpoint=meta["authorization_endpoint"],
            token_endpoint=meta["token_endpoint"],
            revocation_endpoint=meta.get("revocation_endpoint"),
        )
    except KeyError as missing:
        raise ClientError(f"metadata has no {missing}") from None


# --------------------------------------------------------------------------------------
# 2-3. Authorization: PKCE, the browser, and the redirect back to 127.0.0.1


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (86 URL-safe characters) and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def check_callback(params: dict[str, list[str]], state: str, issuer: str) -> str:
    """Validate the authorization response; return the code or raise AuthorizationError."""
    # Every parameter once: two `code`s or two `state`s is a forged or broken response.
    if any(len(values) > 1 for values in params.values()):
        raise AuthorizationError("the redirect repeats a parameter; refused")
    got = {name: values[0] for name, values in params.items()}
    # state first: a response that does not carry our state is not an answer to our request.
    if not secrets.compare_digest(got.get("state", "").encode(), state.encode()):
        raise AuthorizationError("the redirect's state does not match this request; refused")
    if "error" in got:
        description = got.get("error_description")
        text = f"authorization failed: {got['error']}"
        raise AuthorizationError(text + (f": {description}" if description else ""))
    # RFC 9207 mix-up defence: the code must come from the server we sent the user to.
    if "iss" not in got:
        raise AuthorizationError("the redirect carries no iss (RFC 9207); refused")
    if got["iss"] != issuer:
        raise AuthorizationError(f"the redirect came from issuer {got['iss']!r}, not {issuer!r}; refused")
    if not got.get("code"):
        raise AuthorizationError("the redirect carries no code")
    return got["code"]


class CallbackServer(ThreadingHTTPServer):
    """Serves /callback once: the first valid or invalid authorization response wins."""

    daemon_threads = True

    def __init__(self, port: int, state: str, issuer: str) -> None:
        super().__init__(("127.0.0.1", port), CallbackHandler)
        self.state, self.issuer = state, issuer
        self.done = threading.Event()
        self.code: str | None = None
        self.error: AuthorizationError | None = None
        self.lock = threading.Lock()


class CallbackHandler(BaseHTTPRequestHandler):
    server: CallbackServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if url.path != CALLBACK_PATH:  # e.g. /favicon.ico
            self.send_error(404)
            return
        with self.server.lock:
            if self.server.done.is_set():
                self.page(409, "This sign-in has already been handled. You can close this tab.")
                return
            try:
                params = parse_qs(url.query, keep_blank_values=True)
                self.server.code = check_callback(params, self.server.state, self.server.issuer)
                self.page(200, "Strongbox authorization complete. You can close this tab.")
            except AuthorizationError as refused:
                self.server.error = refused
                self.page(400, f"{refused}. You can close this tab.")
            self.server.done.set()

    def page(self, status: int, message: str) -> None:
        page = f"<!doctype html><meta charset=utf-8><title>Strongbox</title><p>{html.escape(message)}"
        body = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The default access log writes the request line to stderr, and that line holds
        # the authorization code. Stay quiet.
        pass


def write_private(path: str, text: str) -> None:
    """Write text to path atomically (a reader never sees half a URL), mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".authorize-url-")
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.replace(temp, path)


def open_in_browser(url: str) -> bool:
    """Best effort. On Linux without a desktop, webbrowser would fall back to a text
    browser (lynx, w3m) that takes over this terminal, so only print the URL there."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def authorize(
    meta: Metadata,
    client_id: str,
    redirect_port: int,
    scope: str,
    resource: str | None,
    *,
    url_file: str | None,
    open_browser: bool,
    timeout: float,
) -> tuple[str, str, str]:
    """Send the user to Strongbox's consent page; return (code, verifier, redirect_uri)."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    redirect_uri = f"http://127.0.0.1:{redirect_port}{CALLBACK_PATH}"

    # Listen before anyone can follow the URL, so the redirect cannot arrive too early.
    try:
        server = CallbackServer(redirect_port, state, meta.issuer)
    except OSError as why:
        raise ClientError(
            f"cannot listen on 127.0.0.1:{redirect_port} ({why.strerror}); pick another "
            "--redirect-port and register that redirect URI with `agents add`"
        ) from None
    threading.Thread(target=server.serve_forever, daemon=True).start()

    try:
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if resource:
            query["resource"] = resource
        # The endpoint may carry its own query (RFC 6749 §3.1); keep it.
        sep = "&" if urlsplit(meta.authorization_endpoint).query else "?"
        auth_url = meta.authorization_endpoint + sep + urlencode(query)

        print(f"\nApprove {client_id} at Strongbox:\n\n    {auth_url}\n")
        if url_file:
            write_private(url_file, auth_url)
            print(f"(authorization URL written to {url_file})")
        elif open_browser and open_in_browser(auth_url):
            print("(opened in your browser)")
        print(f"Waiting up to {timeout:g} s for the redirect to {redirect_uri} ...")

        if not server.done.wait(timeout):
            raise AuthorizationError(f"no redirect within {timeout:g} s; run again to retry")
        if server.error:
            raise server.error
        assert server.code is not None  # set whenever error is not
        return server.code, verifier, redirect_uri
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------
# 4. Token endpoint: code exchange and refresh


def token_request(
    http: requests.Session, meta: Metadata, client: Client, form: dict[str, str], asked_scope: str
) -> Tokens:
    """POST a grant to the token endpoint with client_secret_basic; parse the answer."""
    answer = http.post(
        meta.token_endpoint,
        data=form,  # requests sends it application/x-www-form-urlencoded
        headers={"Authorization": client.basic_auth(), "Accept": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    body = json_object(answer, "the token endpoint")
    if answer.status_code != 200 or "error" in body:
        # RFC 6749 §5.2: {"error": "invalid_grant", "error_description": "..."}
        error, description = str(body.get("error", "unknown_error")), body.get("error_description")
        raise TokenError(error, description, answer.status_code)
    if str(body.get("token_type", "")).lower() != "bearer" or not body.get("access_token"):
        raise ClientError("the token endpoint answered without a Bearer access token")
    return Tokens(
        access_token=body["access_token"],
        refresh_token=body.get("refresh_token"),
        expires_in=body.get("expires_in"),
        scope=body.get("scope") or asked_scope,  # RFC 6749 §5.1: omitted = as asked
    )


def exchange(
    http: requests.Session,
    meta: Metadata,
    client: Client,
    code: str,
    verifier: str,
    redirect_uri: str,
    scope: str,
    resource: str | None,
) -> Tokens:
    """Trade the one-time code (valid 60 s) and the PKCE verifier for tokens. The
    redirect_uri must be the one the code was issued for."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    if resource:
        form["resource"] = resource  # RFC 8707 §2.2: name the resource again
    return token_request(http, meta, client, form, scope)


def refresh(
    http: requests.Session, meta: Metadata, client: Client, tokens: Tokens, resource: str | None
) -> Tokens:
    """Rotate the pair. From now on the old refresh token is spent: Strongbox takes a
    second use of it as theft and revokes the whole grant, so never send it again."""
    if not tokens.refresh_token:
        raise ClientError("no refresh token was issued")
    form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
    if resource:
        form["resource"] = resource
    new = token_request(http, meta, client, form, tokens.scope)
    if not new.refresh_token:  # RFC 6749 §6 lets a server keep the old one; Strongbox rotates
        new = replace(new, refresh_token=tokens.refresh_token)
    return new


def revoke(http: requests.Session, meta: Metadata, client: Client, tokens: Tokens) -> None:
    """RFC 7009: revoke the refresh token, so this grant can no longer be renewed."""
    if not meta.revocation_endpoint or not tokens.refresh_token:
        raise ClientError("nothing to revoke with: no revocation_endpoint or no refresh token")
    answer = http.post(
        meta.revocation_endpoint,
        data={"token": tokens.refresh_token, "token_type_hint": "refresh_token"},
        headers={"Authorization": client.basic_auth()},
        timeout=HTTP_TIMEOUT,
    )
    if answer.status_code != 200:
        raise ClientError(f"revocation endpoint answered {answer.status_code}")


# --------------------------------------------------------------------------------------
# 5. Strongbox's agent API


def api(http: requests.Session, method: str, url: str, tokens: Tokens, **kwargs: Any) -> dict[str, Any]:
    """Call /v1 with the access token alone (it names agent and user); raise on a problem."""
    headers = {"Authorization": f"Bearer {tokens.access_token}"}
    answer = http.request(method, url, headers=headers, timeout=HTTP_TIMEOUT, **kwargs)
    if answer.ok:
        return json_object(answer, f"{method} {url}")
    problem = json_object(answer, f"{method} {url}")  # application/problem+json (RFC 9457)
    raise ProblemError(answer.status_code, problem, answer.headers.get("Retry-After"))


def list_tools(http: requests.Session, strongbox: str, tokens: Tokens) -> list[dict[str, Any]]:
    """GET /v1/tools: the tools this grant covers, with descriptions and input schemas."""
    return api(http, "GET", f"{strongbox}/v1/tools", tokens)["tools"]


def run_tool(
    http: requests.Session, strongbox: str, tokens: Tokens, tool: str, args: dict[str, Any]
) -> dict[str, Any]:
    """POST /v1/tools/{tool}/run: Strongbox attaches the user's provider credential, calls
    the provider and returns {status, headers, body}; the credential never comes back."""
    url = f"{strongbox}/v1/tools/{quote(tool, safe='')}/run"
    return api(http, "POST", url, tokens, json={"args": args})


# --------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Act for a user through Strongbox: OAuth 2.1 consent, then run a tool.",
        epilog="The agent secret is read from STRONGBOX_AGENT_SECRET (printed once by "
        "`strongbox agents add`). Exit codes: 0 ok, 1 failure, 2 usage, 3 authorization "
        "denied or refused, 4 token endpoint error, 5 API problem, 6 the user must visit a URL.",
    )
    parser.add_argument("--strongbox", default="http://127.0.0.1:8080", metavar="URL",
                        help="Strongbox's public_url, which is also its issuer (default: %(default)s)")
    parser.add_argument("--client-id", default="demo-agent", metavar="NAME",
                        help="the agent's name, as given to `agents add` (default: %(default)s)")
    parser.add_argument("--redirect-port", type=int, default=8765, metavar="PORT",
                        help="redirect URI is http://127.0.0.1:PORT/callback; it must be registered "
                        "exactly (default: %(default)s)")
    parser.add_argument("--scope", default="tool:dev.whoami tool:dev.note",
                        help="space-separated tool:NAME / credential:PROVIDER scopes (default: %(default)s)")
    parser.add_argument("--tool", default="dev.whoami", help="the tool to run (default: %(default)s)")
    parser.add_argument("--args", default="{}", metavar="JSON", dest="tool_args",
                        help="the tool's arguments as a JSON object (default: %(default)s)")
    parser.add_argument("--resource", metavar="URI",
                        help="RFC 8707 resource indicator, e.g. URL/v1: the token is then accepted "
                        "only there (one for URL/mcp is refused on /v1)")
    parser.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                        help="how long to wait for the browser's redirect (default: %(default)s)")
    parser.add_argument("--authorize-url-file", metavar="PATH",
                        help="write the authorization URL to PATH instead of opening a browser "
                        "(for test harnesses)")
    parser.add_argument("--no-browser", action="store_true", help="only print the authorization URL")
    parser.add_argument("--revoke", action="store_true",
                        help="revoke the grant at the end (RFC 7009); by default it stays, "
                        "as a real backend would keep it")
    args = parser.parse_args(argv)

    args.strongbox = args.strongbox.rstrip("/")
    if not TOOL_NAME.match(args.tool):
        parser.error(f"--tool {args.tool!r} is not a tool name ([A-Za-z0-9_.-], at most 64)")
    try:
        args.tool_args = json.loads(args.tool_args)
    except json.JSONDecodeError as why:
        parser.error(f"--args is not JSON: {why}")
    if not isinstance(args.tool_args, dict):
        parser.error("--args must be a JSON object, e.g. '{\"text\": \"hello\"}'")
    if not 0 < args.redirect_port < 65536:
        parser.error("--redirect-port must be 1-65535")
    args.secret = os.environ.get("STRONGBOX_AGENT_SECRET", "")
    if not args.secret:
        parser.error("set STRONGBOX_AGENT_SECRET to the secret `strongbox agents add` printed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = Client(args.client_id, args.secret)
    http = requests.Session()
    http.headers["User-Agent"] = "strongbox-example-agent/1.0"

    try:
        meta = discover(http, args.strongbox)
        print(f"Strongbox {meta.issuer}")
        print(f"  authorization endpoint  {meta.authorization_endpoint}")
        print(f"  token endpoint          {meta.token_endpoint}")
        print(f"  revocation endpoint     {meta.revocation_endpoint or '(none)'}")

        code, verifier, redirect_uri = authorize(
            meta, client.client_id, args.redirect_port, args.scope, args.resource,
            url_file=args.authorize_url_file, open_browser=not args.no_browser, timeout=args.timeout,
        )
        print("Approved: got an authorization code (state and iss checked).")

        tokens = exchange(http, meta, client, code, verifier, redirect_uri, args.scope, args.resource)
        print(f"Tokens: {tokens.describe()}")
        print(f"  granted scope: {tokens.scope}")
        if f"tool:{args.tool}" not in tokens.scope.split():
            print(f"  note: the grant does not include tool:{args.tool}; Strongbox will refuse to run it")

        print("\nTools this grant covers:")
        tools = list_tools(http, args.strongbox, tokens)
        width = max((len(t["name"]) for t in tools), default=0)
        for tool in tools:
            print(f"  {tool['name']:<{width}}  {tool.get('description') or ''}  [{tool.get('provider', '?')}]")

        print(f"\nRunning {args.tool} with {json.dumps(args.tool_args)}:")
        result = run_tool(http, args.strongbox, tokens, args.tool, args.tool_args)
        print(f"  the provider answered {result['status']}")
        body = result.get("body")
        print(json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body, str) else body)

        print("\nRefreshing the tokens:")
        tokens = refresh(http, meta, client, tokens, args.resource)
        print(f"  new pair: {tokens.describe()}")
        print("  the previous refresh token is now spent; presenting it again would revoke the whole grant")
        count = len(list_tools(http, args.strongbox, tokens))
        print(f"  the new access token works: GET /v1/tools listed {count} tool(s)")

        if args.revoke:
            revoke(http, meta, client, tokens)
            print("\nRevoked the refresh token at the revocation endpoint (RFC 7009).")
        else:
            print("\nThe grant stays until the user revokes it on the account page (or use --revoke).")
        return Exit.OK

    except ProblemError as problem:
        print(f"error: {problem}", file=sys.stderr)
        if problem.url:
            print(f"\nThe user must open this URL, then run again:\n\n    {problem.url}\n", file=sys.stderr)
        return problem.exit_code
    except ClientError as failure:
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code
    except requests.RequestException as failure:
        print(f"error: cannot reach Strongbox: {failure.__class__.__name__}: {failure}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
