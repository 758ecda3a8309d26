"""Ray's token authentication, seen from a driver: will the cluster let this process in?

A cluster started with token auth refuses a driver that sends no token or a wrong one;
``ray.init`` then logs ``InvalidAuthToken`` once a second for 20 s and raises a bare
"Failed to connect". :func:`check_token` asks the cluster's GCS once, with the token Ray
would send, and raises at once with what to do. Ray sends a token only when
``RAY_AUTH_MODE=token`` (it turns that on by itself only for ``ray.init()`` without an
address), and so does the check: a token never goes where Ray would not send it.
"""

from __future__ import annotations

import os

from shardemb.errors import ClusterConnectionError

__all__ = ["auth_help", "check_token", "local_token", "refused_auth"]

#: Where Ray reads the token, in its order (see ``ray.exceptions.AuthenticationError``).
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"


def local_token() -> tuple[str | None, str | None]:
    """The token this process would send, and where it is from: ``(None, None)`` unless
    ``RAY_AUTH_MODE`` is ``token`` (then nothing is sent), ``(None, place)`` if none is found.

    Example:
        >>> os.environ.get("RAY_AUTH_MODE") == "token" or local_token() == (None, None)
        True
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None, None
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    path = os.environ.get(TOKEN_PATH_ENV) or os.path.expanduser(DEFAULT_TOKEN_FILE)
    try:
        with open(path) as f:
            return f.read().strip() or None, path
    except OSError:
        return None, path


def check_token(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`ClusterConnectionError` when the GCS at ``address`` (``host:port``)
    refuses this process's token, or its lack of one. Any other answer, or none, is left
    for ``ray.init`` to report."""
    try:
        import grpc  # with ray[default], which shardemb requires
    except ImportError:
        return
    token, _ = local_token()
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    try:  # an empty GetClusterIdRequest: the first call a Ray driver makes
        channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(
            b"",
            timeout=timeout,
            metadata=(("authorization", f"Bearer {token}"),) if token else (),
        )
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ClusterConnectionError(auth_help(address)) from None
    finally:
        channel.close()


def refused_auth(err: BaseException) -> bool:
    """Whether ``err`` (or an error that caused it) is Ray's refusal of this process's token."""
    text = ""
    while err is not None:
        text, err = text + str(err).lower(), err.__cause__ or err.__context__
    return "invalidauthtoken" in text or "unauthenticated" in text or "token auth" in text


def auth_help(address: str | None) -> str:
    """The message for a cluster that refused this process: why, and how to pass the token.

    Example:
        >>> "RAY_AUTH_MODE=token" in auth_help("192.0.2.2:6379")
        True
    """
    token, source = local_token()
    if source is None:
        mode = os.environ.get("RAY_AUTH_MODE")
        why = (
            f"this process sent no token: RAY_AUTH_MODE is "
            f"{'unset' if mode is None else repr(mode)}, and with an address Ray sends a "
            "token only when RAY_AUTH_MODE=token"
        )
    elif token is None:
        why = (
            f"RAY_AUTH_MODE=token is set but no token was found ({TOKEN_ENV} is unset and "
            f"{source} is missing or empty)"
        )
    else:
        why = f"it refused the token from {source}: it is not this cluster's token"
    return (
        f"The Ray cluster requires token authentication (InvalidAuthToken) and {why}. "
        "Set RAY_AUTH_MODE=token in the driver's environment and give it the cluster's "
        f"token in {TOKEN_ENV}, in a file named by {TOKEN_PATH_ENV}, or in "
        f"{DEFAULT_TOKEN_FILE} (`ray get-auth-token` on the head node prints it; for "
        "`shardemb cluster up`, run the `export` line it prints). "
        f"Received: address={address!r}"
    )
