"""Where webhooks may send: http(s) URLs whose host resolves only to public addresses.

A webhook URL is typed by a curator but fetched by a worker inside the deployment's network, so
without this a URL could reach the database, the metadata service of the cloud it runs in, or
anything else on a private network (server-side request forgery). The URL is checked when it is
saved (scheme, credentials, a literal private address) and again at every delivery, where the
host is resolved and every address it resolves to must be public: checking only at save time
would let a DNS record change afterwards. The delivery then connects to the address that was
checked (see annotation.webhooks), so a second lookup cannot answer differently.

`REFINERY_WEBHOOKS_ALLOW_PRIVATE` turns the address check off (development, and tests, whose
receivers listen on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

SCHEMES = ("http", "https")


class WebhookURLRefused(ValueError):
    """A URL webhooks will not send to; the message says why."""


class HostNotResolved(Exception):
    """The host has no address now; unlike a refusal, this may pass."""


def _allow_private() -> bool:
    return bool(getattr(settings, "REFINERY_WEBHOOKS_ALLOW_PRIVATE", False))


def address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified or address.is_link_local
    )


def url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL webhooks may send to by its form; WebhookURLRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WebhookURLRefused(f"not a valid URL: {error}") from error
    if parts.scheme not in SCHEMES:
        raise WebhookURLRefused("webhook URLs must start with http:// or https://")
    if not parts.hostname:
        raise WebhookURLRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLRefused("credentials in the URL are not supported: receivers check the signature")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_url(url: str) -> None:
    """The checks made when a webhook is saved: no DNS lookup, the host may not exist yet."""
    _scheme, host, _port = url_parts(url)
    if _allow_private():
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        if host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
            raise WebhookURLRefused("webhooks cannot be sent to this machine") from None
        return
    if not address_is_public(literal):
        raise WebhookURLRefused(f"webhooks cannot be sent to a private address ({literal})")


def resolve_public(host: str, port: int) -> str:
    """The address to connect to for `host`; WebhookURLRefused if any address it has is not public.

    All addresses are checked, not only the first: a host could list a public address and a
    private one and leave the choice to whoever connects.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise HostNotResolved(f"cannot resolve {host}: {error}") from error
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise HostNotResolved(f"{host} has no address")
    if not _allow_private():
        refused = [str(address) for address in addresses if not address_is_public(address)]
        if refused:
            raise WebhookURLRefused(f"{host} resolves to a private address ({', '.join(refused)})")
    return str(addresses[0])


def validate_webhook_url(value: str) -> None:
    """Model field validator: the admin's and the API's forms refuse what deliveries would refuse."""
    try:
        check_url(value)
    except WebhookURLRefused as error:
        raise ValidationError(str(error), code="webhook_url") from error
