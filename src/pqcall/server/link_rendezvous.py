"""The link rendezvous (issue 22): where a new device and an existing one swap two blobs.

::

    new device (no account yet)                 server                existing device (logged in)
      POST /link/requests {request, poll_hash} -> 201 {link_id, expires}
          (shows link_id / a code to type)                            GET /link/requests/{link_id}
                                                                        -> 200 {request, expires}
                                                                      PUT .../response {response}
                                                                        -> 204 (once; then 409)
      POST .../poll {poll_secret}              -> 202 while waiting,
                                                  200 {response} once: the entry is deleted

The server never reads either blob (``pqcall.client`` seals them with keys from
the handshake; the short code the person compares is what authenticates it).
What the server guarantees, against a stranger on the network:

- **no reading**: a request is served only to a logged-in account that knows its
  ``link_id`` (80 random bits), and only to the account it names if it names
  one (``username``: then no other account can read or answer it, not even
  one that learned the id); a response only to the holder of the secret
  whose SHA-256 the request named, and only once (the row is deleted as it is
  handed over, in one statement);
- **no double answer**: a request takes one response (a conditional update; a
  second gets 409), so nobody can swap the answer after the fact;
- **no filling the table**: creating is rate limited per client address
  (:data:`CREATE_LIMIT`), each address may hold :data:`MAX_PENDING_PER_CLIENT`
  live requests and the server :data:`MAX_PENDING_TOTAL` (then 503 with
  Retry-After); every entry expires after :data:`LINK_TTL_S` and expired ones
  are deleted before each insert; sizes are capped by the schema
  (16 KiB request, 45 KiB response); polling is rate limited per address too
  (:data:`POLL_LIMIT`).

Rate limits scale with ``rate_limit_scale`` (0: off); the bounds on pending
entries always hold.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import JSONResponse

from pqcall.server.auth import CurrentAccount
from pqcall.server.context import AppContext, Context, api_error
from pqcall.server.ratelimit import RateLimit
from pqcall.server.routes.devices import address_of, route_limit
from pqcall.server.storage.link_store import LinkAnswer, LinkLimitReached, LinkStore
from pqcall.signaling.account_messages import (
    LINK_ID_PATTERN,
    CreateLinkRequest,
    LinkCreated,
    LinkPoll,
    LinkRequestView,
    LinkResponseBody,
    LinkResponseView,
)

logger = logging.getLogger(__name__)

LINK_TTL_S = 600.0  # a request lives 10 minutes
LINK_ID_BYTES = 10  # 80 bits: 16 base32 letters
MAX_PENDING_PER_CLIENT = 5
MAX_PENDING_TOTAL = 10_000
FULL_RETRY_AFTER_S = 60
CREATE_LIMIT = RateLimit(rate_per_s=1.0 / 60.0, burst=5.0)  # per client address
POLL_LIMIT = RateLimit(rate_per_s=1.0, burst=10.0)  # per client address
LINKS_EXTRA = "links"  # context.extras key of the LinkStore

UNKNOWN_LINK = "no such link request (unknown, expired or already collected)"

LinkIdPath = Annotated[str, Path(pattern=LINK_ID_PATTERN, description="16 base32 letters")]

router = APIRouter(prefix="/link/requests", tags=["devices"])


def new_link_id() -> str:
    """80 random bits as 16 lowercase base32 letters."""
    return base64.b32encode(secrets.token_bytes(LINK_ID_BYTES)).decode("ascii").lower()


def link_store(context: AppContext) -> LinkStore:
    """The process's :class:`LinkStore` on the shared engine (made on first use)."""
    store = context.extras.get(LINKS_EXTRA)
    if not isinstance(store, LinkStore) or store.engine is not context.storage.engine:
        store = LinkStore(context.storage.engine)
        context.extras[LINKS_EXTRA] = store
    return store


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={429: {"description": "too many"}, 503: {"description": "server full"}},
)
async def create_link(body: CreateLinkRequest, request: Request, context: Context) -> LinkCreated:
    """Leave a new device's request (no login); 429 per address, 503 when the server is full."""
    client = address_of(request)
    route_limit(context, "link-create", CREATE_LIMIT, client)
    now = context.now()
    link_id = new_link_id()
    try:
        await link_store(context).create(
            link_id,
            body.request,
            body.poll_hash,
            client,
            now,
            now + LINK_TTL_S,
            max_per_client=MAX_PENDING_PER_CLIENT,
            max_total=MAX_PENDING_TOTAL,
            username=body.username,
        )
    except LinkLimitReached as exc:
        if exc.per_client:
            raise api_error(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"this address has {MAX_PENDING_PER_CLIENT} pending link requests;"
                " wait for one to expire",
                {"Retry-After": str(int(LINK_TTL_S))},
            ) from None
        logger.warning("link rendezvous full (%d pending)", MAX_PENDING_TOTAL)
        raise api_error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "too many pending link requests on this server; try again later",
            {"Retry-After": str(FULL_RETRY_AFTER_S)},
        ) from None
    return LinkCreated(link_id=link_id, expires=now + LINK_TTL_S)


@router.get("/{link_id}")
async def get_link(
    link_id: LinkIdPath, account: CurrentAccount, context: Context
) -> LinkRequestView:
    """The new device's request, for a logged-in device that was shown its id; 404 if gone."""
    found = await link_store(context).get_request(link_id, context.now(), account.username)
    if found is None:
        raise api_error(status.HTTP_404_NOT_FOUND, UNKNOWN_LINK)
    request, expires = found
    return LinkRequestView(request=request, expires=expires)


@router.put("/{link_id}/response", status_code=status.HTTP_204_NO_CONTENT)
async def answer_link(
    link_id: LinkIdPath, body: LinkResponseBody, account: CurrentAccount, context: Context
) -> Response:
    """Leave the one response to a request; 409 if it has one, 404 if it is gone."""
    outcome = await link_store(context).answer(
        link_id, body.response, account.id, context.now(), account.username
    )
    if outcome is LinkAnswer.UNKNOWN:
        raise api_error(status.HTTP_404_NOT_FOUND, UNKNOWN_LINK)
    if outcome is LinkAnswer.ALREADY:
        raise api_error(status.HTTP_409_CONFLICT, "this link request was already answered")
    logger.info("link request answered by %s", account.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{link_id}/poll",
    response_model=LinkResponseView,
    responses={202: {"description": "no response yet"}, 429: {"description": "too many polls"}},
)
async def poll_link(
    link_id: LinkIdPath, body: LinkPoll, request: Request, context: Context
) -> LinkResponseView | JSONResponse:
    """The response, once, to the holder of the poll secret (no login); 202 while waiting."""
    route_limit(context, "link-poll", POLL_LIMIT, address_of(request))
    poll_hash = hashlib.sha256(body.poll_secret).digest()
    found = await link_store(context).collect(link_id, poll_hash, context.now())
    if found is None:
        raise api_error(status.HTTP_404_NOT_FOUND, UNKNOWN_LINK)
    if found.response is None:
        return JSONResponse({"status": "waiting"}, status_code=status.HTTP_202_ACCEPTED)
    return LinkResponseView(response=found.response)
