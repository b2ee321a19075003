"""Find a scheme by name, generate keys, and load serialized contexts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from crypto.ckks import CKKSScheme
from crypto.paillier import PaillierScheme
from crypto.plain import PlainScheme
from crypto.scheme import HEScheme, UnknownSchemeError, read_header

__all__ = ["DEFAULT_SCHEME", "SCHEMES", "generate", "load_context", "scheme_class"]

SCHEMES: Final = ("ckks", "paillier", "plain")
DEFAULT_SCHEME: Final = "ckks"

_CLASSES: Final[Mapping[str, type[HEScheme]]] = {
    "ckks": CKKSScheme,
    "paillier": PaillierScheme,
    "plain": PlainScheme,
}


def scheme_class(scheme_name: str) -> type[HEScheme]:
    """Return the class implementing ``scheme_name``.

    Parameters
    ----------
    scheme_name
        One of ``SCHEMES``.

    Returns
    -------
    type[HEScheme]
        The implementation.

    Raises
    ------
    UnknownSchemeError
        The name is not one of ``SCHEMES``.
    """
    try:
        return _CLASSES[scheme_name]
    except KeyError:
        raise UnknownSchemeError(
            f"unknown HE scheme {scheme_name!r}; choose one of {', '.join(SCHEMES)}"
        ) from None


def generate(scheme_name: str = DEFAULT_SCHEME, **params: Any) -> HEScheme:
    """Generate a new key for a scheme; the result holds the secret key.

    Parameters
    ----------
    scheme_name
        One of ``SCHEMES``.
    **params
        Keyword parameters of that scheme's ``generate`` (e.g. ``key_bits`` for Paillier,
        ``scale_bits`` for CKKS).

    Returns
    -------
    HEScheme
        A scheme object with the secret key.

    Raises
    ------
    UnknownSchemeError
        Unknown scheme name.
    SchemeParameterError
        Invalid parameters.
    TypeError
        A parameter name the scheme does not take.
    """
    return scheme_class(scheme_name).generate(**params)


def load_context(data: bytes, *, require_public: bool = False) -> HEScheme:
    """Load a public or secret context of any scheme (the header says which).

    Parameters
    ----------
    data
        Bytes from :meth:`HEScheme.public_context` or :meth:`HEScheme.secret_context`.
    require_public
        Refuse a secret context; the aggregator should always pass ``True``.

    Returns
    -------
    HEScheme
        Holding the secret key only if ``data`` is a secret context.

    Raises
    ------
    PayloadError
        The bytes are not an intact context.
    UnexpectedSecretKeyError
        ``require_public`` is set and the bytes hold a secret key.
    """
    # The header names the scheme; the scheme's loader checks everything else, the kind included.
    return scheme_class(read_header(data).scheme).load(data, require_public=require_public)
