"""Enrolment, bank side: keep the operator's URL and token, create the keys, register them."""

from __future__ import annotations

import logging

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import ConflictError, ConsortiumError
from bank_node.agent.identity import BankIdentity, load_or_create_identity
from bank_node.agent.state import AgentConfig, StateDir

__all__ = ["enrol", "register_keys"]

log = logging.getLogger(__name__)


def register_keys(client: ConsortiumClient, identity: BankIdentity) -> bool:
    """Register the identity's public keys; a repeat with the same keys is fine.

    Returns
    -------
    bool
        True if registered now, False if the consortium already held these keys.

    Raises
    ------
    ConsortiumError
        The consortium holds *other* keys for this bank (only its operator can reset that).
    """
    try:
        client.register_keys(identity.bank_id, signing_key=identity.signing_key_b64, box_key=identity.box_key_b64)
    except ConflictError as exc:
        known = {b.bank_id: b for b in client.list_banks()}.get(identity.bank_id)
        if known is not None and (known.signing_key, known.box_key) == (
            identity.signing_key_b64,
            identity.box_key_b64,
        ):
            return False
        raise ConsortiumError(
            f"the consortium already holds other keys for bank {identity.bank_id!r}; "
            "these keys cannot replace them (ask the consortium operator)",
            status=exc.status,
        ) from None
    return True


def enrol(state: StateDir, *, url: str, bank_id: str, token: str, client: ConsortiumClient | None = None) -> BankIdentity:
    """Store the enrolment settings, create (or reload) the bank's keys and register them.

    Parameters
    ----------
    state
        The agent's state directory.
    url, bank_id, token
        What the consortium operator gave this bank.
    client
        A client to use (tests); one is built from ``url`` and ``token`` otherwise.

    Returns
    -------
    BankIdentity
        The registered identity.
    """
    state.save_config(AgentConfig(url=url.rstrip("/"), bank_id=bank_id))
    state.save_token(token)
    identity, created = load_or_create_identity(state, bank_id)
    own_client = client is None
    client = client or ConsortiumClient(base_url=url, token=token)
    try:
        registered = register_keys(client, identity)
    finally:
        if own_client:
            client.close()
    log.info("bank keys %s: bank=%s new_keys=%s", "registered" if registered else "already registered", bank_id, created)
    return identity
