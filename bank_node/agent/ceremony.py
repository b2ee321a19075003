"""The key ceremony, bank side: one shared HE secret key, never seen by the aggregator.

The designated bank generates the HE context for the roster it pinned, keeps the secret context in
its state directory, publishes the *public* context signed for that roster, and seals the *secret*
context to every other member's X25519 box key *as pinned* (``SealedBox``), signing each share;
the aggregator relays them but cannot open them. Every other bank checks the public context and
its share against its own pinned roster (publisher a member, signatures by the publisher's pinned
key, the key made for a roster it pinned with nobody removed since), opens the share, checks that
it is the key of the public context, and keeps it.

When a roster removes a member, the key made for an older roster is stale: banks refuse to use it,
and the designated bank rotates it (``publish_keys(..., rotate=True)``) for the new roster; the
departed bank receives no share of the new key, so it cannot read later sums.

Both steps can be repeated safely: the designated bank reuses the key it stored, and posts shares
to members pinned since; a bank that already holds the key keeps it.
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
from bank_node.agent.membership import PinnedRoster, require_roster
from bank_node.agent.resources import SignedBytes
from bank_node.agent.retry import Backoff
from bank_node.agent.state import StateDir
from crypto.scheme import CryptoError, HEScheme
from crypto.signing import SignatureError, context_message, seal_to, share_message, verify

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
    rotate: bool = False,
) -> CeremonyResult:
    """The designated bank's part: generate, keep, publish, and share the key.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys (signs the public context and the shares).
    state
        Where the secret context is kept (0600) and the roster is pinned.
    scheme
        HE scheme to generate (one of ``crypto.SCHEMES``).
    scheme_params
        Keyword parameters of the scheme's key generation.
    rotate
        Replace the key this bank holds by a new one made for the pinned roster (after a member
        left). Without it, a stored key is reused.

    Returns
    -------
    CeremonyResult

    Raises
    ------
    CeremonyError
        No pinned roster, the consortium holds another key for this roster, or the stored key
        is of another scheme.
    """
    pinned = require_roster(client, identity, state)
    roster = pinned.roster
    stored = None if rotate else state.load_secret_context()
    if stored is None:
        context = crypto.generate(scheme, **(scheme_params or {}))
        secret = context.secret_context()
        # Kept before anything is published: a published key whose secret half was lost would
        # leave the consortium without a usable key.
        state.save_secret_context(secret)
        log.info("generated HE key: scheme=%s key_id=%s roster=%d", scheme, context.key_id, roster.version)
    else:
        secret = stored
        context = _load_secret(secret, origin=f"{state.path(StateDir.SECRET_CONTEXT)}")
        if context.name != scheme:
            raise CeremonyError(
                f"{state.root} already holds a {context.name} key ({context.key_id}); "
                f"it will not be replaced by a new {scheme} key (pass --rotate to make a new key)"
            )
    public = context.public_context()
    try:
        client.put_public_context(public, signature=identity.sign_context(roster.digest, public),
                                  roster_digest=roster.digest)
        log.info("published the public HE context: key_id=%s", context.key_id)
    except ConflictError as exc:
        published = client.get_public_context()
        if published.key_id != context.key_id:
            raise CeremonyError(
                f"the consortium already holds another HE context (key {published.key_id}) and refused this "
                f"bank's key {context.key_id}: {exc.message}"
            ) from None
    shared = []
    for member in roster.members:
        if member.bank_id == identity.bank_id:
            continue
        # Sealed to the box key the members pinned, never to what the aggregator serves.
        sealed = seal_to(member.box_key, secret)
        try:
            client.put_share(member.bank_id, sealed, signature=identity.sign_share(member.bank_id, context.key_id, sealed))
        except ConflictError:
            log.info("share already posted: bank=%s", member.bank_id)
            continue
        shared.append(member.bank_id)
        log.info("posted sealed share: bank=%s", member.bank_id)
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
    """Every other bank's part: fetch, verify, open, check and keep the secret context.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys (opens the sealed share).
    state
        Where the secret context is kept (0600) and the roster is pinned.
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
        No pinned roster, nothing posted in time, a context or share not signed by a pinned
        member, a stale key, a share that does not open, or a key that is not the published one.
    """
    backoff = backoff or Backoff(initial_s=1.0, max_s=30.0)
    deadline = clock() + wait_s
    while True:
        pinned = require_roster(client, identity, state)
        try:
            published = client.get_public_context()
            public = verified_public_context(published, pinned)
            sealed = client.get_share(identity.bank_id)
            break
        except (NotFoundError, StaleKeyError) as exc:
            pause = backoff.next()
            if clock() + pause > deadline:
                reason = exc.message if isinstance(exc, NotFoundError) else str(exc)
                raise CeremonyError(
                    f"the key ceremony has not reached bank {identity.bank_id!r} yet ({reason}); "
                    "wait for the designated bank to publish the key, or pass --wait",
                    status=getattr(exc, "status", None),
                ) from None
            sleep(pause)
    _verify_share(sealed, published, identity, pinned)
    try:
        secret = identity.open_sealed(sealed.body)
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


class StaleKeyError(CeremonyError):
    """The consortium's key was made for a roster of a bank removed since: it must rotate."""


def verified_public_context(published: SignedBytes, pinned: PinnedRoster) -> HEScheme:
    """The consortium's public context, once checked against this bank's pinned roster.

    Raises
    ------
    CeremonyError
        Not published by a pinned member, a signature that does not verify, or a roster this
        bank never pinned.
    StaleKeyError
        The key predates the removal of a member (who holds it): it must rotate first.
    """
    member = pinned.roster.member(published.signer)
    if member is None:
        raise CeremonyError(
            f"the consortium's HE context was published by {published.signer or 'nobody'!r}, "
            "not a member of the pinned roster: refusing it"
        )
    try:
        verify(member.signing_key, context_message(member.bank_id, published.roster_digest, published.body),
               published.signature)
    except SignatureError as exc:
        raise CeremonyError(f"the consortium's HE context is not signed by {member.bank_id}: {exc}") from None
    removed = pinned.removed_since(published.roster_digest)
    if removed:
        raise StaleKeyError(
            f"the consortium's HE key was made before {', '.join(removed)} left; it must rotate "
            "(the designated bank runs `fedfraud bank ceremony --generate --rotate`)"
        )
    return _load_public(published.body)


def _verify_share(sealed: SignedBytes, published: SignedBytes, identity: BankIdentity, pinned: PinnedRoster) -> None:
    member = pinned.roster.member(sealed.signer)
    if member is None or sealed.signer != published.signer or sealed.key_id != published.key_id:
        raise CeremonyError(
            f"the sealed share was posted by {sealed.signer!r} for key {sealed.key_id!r}, not by the "
            f"pinned member that published the current key ({published.signer!r}, {published.key_id!r}): refusing it"
        )
    try:
        verify(member.signing_key, share_message(member.bank_id, identity.bank_id, sealed.key_id, sealed.body),
               sealed.signature)
    except SignatureError as exc:
        raise CeremonyError(f"the sealed share is not signed by {member.bank_id}: {exc}") from None


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


def check_consortium_key(
    client: ConsortiumClient, identity: BankIdentity, state: StateDir, context: HEScheme
) -> PinnedRoster:
    """Check that the consortium's current public context, verified against the pinned roster,
    is the key this bank holds; return the pinned roster.

    Raises
    ------
    CeremonyError
        No public context yet, one no pinned member signed, a stale key, or another key.
    """
    pinned = require_roster(client, identity, state)
    try:
        public = verified_public_context(client.get_public_context(), pinned)
    except NotFoundError:
        raise CeremonyError("the consortium holds no HE context yet: the key ceremony is not done") from None
    if public.key_id != context.key_id:
        raise CeremonyError(
            f"this bank holds HE key {context.key_id} but the consortium uses {public.key_id}: "
            "run `fedfraud bank ceremony` again"
        )
    return pinned


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
