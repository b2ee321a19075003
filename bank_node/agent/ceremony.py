"""The key ceremony, bank side: one shared HE secret key, never seen by the aggregator.

The designated bank generates the HE context, keeps the secret context in its state directory,
publishes the *public* context, and seals the *secret* context to every other registered bank's
X25519 box key (``SealedBox``), posting each sealed share through the aggregator, which cannot
open it. Every other bank fetches its share, opens it with its private box key, checks that it is
the key of the published public context, and keeps it in its state directory.

Both steps can be repeated safely: the designated bank reuses the key it stored, and posts shares
to banks registered since; a bank that already holds the key keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crypto
from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import CeremonyError, ConflictError, NotFoundError
from bank_node.agent.identity import BankIdentity
from bank_node.agent.retry import Backoff
from bank_node.agent.state import StateDir
from crypto.scheme import CryptoError, HEScheme
from crypto.signing import CEREMONY_RUN_ID, SignatureError, seal_to

__all__ = ["CeremonyResult", "check_consortium_key", "fetch_share", "load_secret_scheme", "publish_keys"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CeremonyResult:
    """What the ceremony left in this bank's state directory.

    Attributes
    ----------
    scheme
        HE scheme name.
    key_id
        Id of the consortium's key (the same in the public and the secret context).
    shared_with
        Banks a sealed share was posted to now (designated bank only).
    """

    scheme: str
    key_id: str
    shared_with: tuple[str, ...] = ()


def publish_keys(
    client: ConsortiumClient,
    identity: BankIdentity,
    state: StateDir,
    *,
    scheme: str = crypto.DEFAULT_SCHEME,
    scheme_params: dict[str, Any] | None = None,
) -> CeremonyResult:
    """The designated bank's part: generate, keep, publish, and share the key.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys (signs the public context).
    state
        Where the secret context is kept (0600).
    scheme
        HE scheme to generate (one of ``crypto.SCHEMES``).
    scheme_params
        Keyword parameters of the scheme's key generation.

    Returns
    -------
    CeremonyResult

    Raises
    ------
    CeremonyError
        The consortium already holds another context, or the stored key is of another scheme.
    """
    stored = state.load_secret_context()
    if stored is None:
        context = crypto.generate(scheme, **(scheme_params or {}))
        secret = context.secret_context()
        # Kept before anything is published: a published key whose secret half was lost would
        # leave the consortium without a usable key.
        state.save_secret_context(secret)
        log.info("generated HE key: scheme=%s key_id=%s", scheme, context.key_id)
    else:
        secret = stored
        context = _load_secret(secret, origin=f"{state.path(StateDir.SECRET_CONTEXT)}")
        if context.name != scheme:
            raise CeremonyError(
                f"{state.root} already holds a {context.name} key ({context.key_id}); "
                f"it will not be replaced by a new {scheme} key"
            )
    public = context.public_context()
    try:
        client.put_public_context(public, signature=identity.sign_proposal(CEREMONY_RUN_ID, public))
        log.info("published the public HE context: key_id=%s", context.key_id)
    except ConflictError:
        published = _load_public(client.get_public_context())
        if published.key_id != context.key_id:
            raise CeremonyError(
                f"the consortium already holds another HE context (key {published.key_id}); "
                f"this bank's key {context.key_id} was not published: fetch your share instead"
            ) from None
    shared = []
    for bank in client.list_banks():
        if bank.bank_id == identity.bank_id or not bank.box_key:
            continue
        try:
            sealed = seal_to(bank.box_key, secret)
        except SignatureError as exc:
            log.warning("cannot seal a share: bank=%s reason=%s", bank.bank_id, exc)
            continue
        try:
            client.put_share(bank.bank_id, sealed, signature=identity.sign_proposal(CEREMONY_RUN_ID, sealed))
        except ConflictError:
            log.info("share already posted: bank=%s", bank.bank_id)
            continue
        shared.append(bank.bank_id)
        log.info("posted sealed share: bank=%s", bank.bank_id)
    return CeremonyResult(scheme=context.name, key_id=context.key_id, shared_with=tuple(shared))


def fetch_share(
    client: ConsortiumClient,
    identity: BankIdentity,
    state: StateDir,
    *,
    wait_s: float = 0.0,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> CeremonyResult:
    """Every other bank's part: fetch, open, check and keep the secret context.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys (opens the sealed share).
    state
        Where the secret context is kept (0600).
    wait_s
        How long to wait for the public context and the share to be posted (0: ask once).
    backoff
        Pauses between asks while waiting.
    sleep, clock
        Injected for tests.

    Returns
    -------
    CeremonyResult

    Raises
    ------
    CeremonyError
        Nothing posted in time, a share that does not open with this bank's key, or a secret
        context whose key is not the published one.
    """
    backoff = backoff or Backoff(initial_s=1.0, max_s=30.0)
    deadline = clock() + wait_s
    while True:
        try:
            public = _load_public(client.get_public_context())
            sealed = client.get_share(identity.bank_id)
            break
        except NotFoundError as exc:
            pause = backoff.next()
            if clock() + pause > deadline:
                raise CeremonyError(
                    f"the key ceremony has not reached bank {identity.bank_id!r} yet ({exc.message}); "
                    "wait for the designated bank to publish the key, or pass --wait",
                    status=exc.status,
                ) from None
            sleep(pause)
    try:
        secret = identity.open_sealed(sealed)
    except SignatureError as exc:
        raise CeremonyError(str(exc)) from None
    context = _load_secret(secret, origin="the sealed share")
    if context.key_id != public.key_id:
        raise CeremonyError(
            f"the shared secret key ({context.key_id}) is not the key of the consortium's public "
            f"context ({public.key_id}); ask the designated bank to post a new share"
        )
    held = state.load_secret_context()
    if held is not None and held != secret:
        log.warning("replacing the stored HE secret context with the consortium's: key_id=%s", context.key_id)
    state.save_secret_context(secret)
    log.info("stored the HE secret context: scheme=%s key_id=%s", context.name, context.key_id)
    return CeremonyResult(scheme=context.name, key_id=context.key_id)


def load_secret_scheme(state: StateDir) -> HEScheme:
    """The HE scheme with the secret key, from the state directory.

    Raises
    ------
    CeremonyError
        No key yet (run the ceremony), or the stored bytes are not a secret context.
    """
    secret = state.load_secret_context()
    if secret is None:
        raise CeremonyError(f"{state.root} holds no HE key: run `fedfraud bank ceremony` first")
    return _load_secret(secret, origin=str(state.path(StateDir.SECRET_CONTEXT)))


def check_consortium_key(client: ConsortiumClient, context: HEScheme) -> None:
    """Check that the consortium's public context is the key this bank holds.

    Raises
    ------
    CeremonyError
        No public context yet, or another key (this bank's contributions would be refused).
    """
    try:
        public = _load_public(client.get_public_context())
    except NotFoundError:
        raise CeremonyError("the consortium holds no HE context yet: the key ceremony is not done") from None
    if public.key_id != context.key_id:
        raise CeremonyError(
            f"this bank holds HE key {context.key_id} but the consortium uses {public.key_id}: "
            "run `fedfraud bank ceremony` again"
        )


def _load_secret(data: bytes, *, origin: str) -> HEScheme:
    try:
        context = crypto.load_context(data)
    except CryptoError as exc:
        raise CeremonyError(f"{origin} is not an HE secret context: {exc}") from None
    if not context.has_secret_key:
        raise CeremonyError(f"{origin} holds a public context, not the secret key")
    return context


def _load_public(data: bytes) -> HEScheme:
    try:
        return crypto.load_context(data, require_public=True)
    except CryptoError as exc:
        raise CeremonyError(f"the consortium's public HE context is unusable: {exc}") from None
