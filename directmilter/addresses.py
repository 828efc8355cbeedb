"""Which mailbox an envelope address names: the one the MTA will deliver to, never the client's spelling.

A client can spell one mailbox many ways (``bob@direct.b.test.``, ``"bob"@...``, ``bob%direct.b.test@localhost``,
``direct.b.test!bob@localhost``, ``@mx:bob@...``, ``bob+tag@...``) and Postfix's trivial-rewrite resolves them all
to bob. Deciding "hosted or not", whose keys and whose anchors on the spelling would let plaintext into bob's
mailbox or bob's trust be replaced by his domain's. So the milter decides on what the MTA says it resolved the
address to (Postfix's ``{rcpt_addr}`` / ``{mail_addr}`` milter macros); this module turns that into one canonical
form, and where the MTA said nothing it computes the same form itself, refusing routing syntax (``%``, ``!``,
source routes) whose meaning depends on the MTA's tables rather than guessing it.
"""

from __future__ import annotations

import re

from directmilter.errors import AddressSyntax

#: Characters whose meaning in a local part depends on the MTA (percent hack, bang path) or that start a
#: source route: when the MTA did not resolve such an address for us, we do not guess where it goes.
_ROUTING = ("%", "!")


#: RFC 5322 dot-atom: the only local parts a Direct address may have (its MDNs and DSNs must be able to name it).
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def check_plain(address: str) -> str:
    """``address`` unchanged when its local part is a dot-atom; AddressSyntax otherwise (a hosted mailbox whose
    name needs quoting could not be named in the notifications we send for it)."""
    local = address.rpartition("@")[0]
    if not _DOT_ATOM.fullmatch(local):
        raise AddressSyntax(f"address {address!r}: a Direct address needs a plain local part (no quoting, blanks "
                            "or special characters)")
    return address


def strip_path(smtp_path: str) -> str:
    """The address inside an SMTP path: ``<a@b>`` -> ``a@b`` (blanks and angle brackets removed)."""
    return smtp_path.strip().removeprefix("<").removesuffix(">").strip()


def _split(address: str) -> tuple[str, str]:
    """Local part and domain, split at the last ``@`` outside a quoted string; the local part unquoted."""
    local: list[str] = []
    quoted = escaped = False
    at = -1
    for index, char in enumerate(address):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "@" and not quoted:
            at = index
    if quoted or escaped:
        raise AddressSyntax(f"address {address!r}: unbalanced quotes")
    head, domain = (address[:at], address[at + 1:]) if at >= 0 else (address, "")
    quoted = escaped = False
    for char in head:
        if escaped:
            local.append(char)
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        else:
            local.append(char)
    return "".join(local), domain


def internal_form(address: str) -> str:
    """Postfix's internal form of an envelope address: the local part unquoted, nothing else changed (its duplicate
    filter and its recipient deletion compare this form)."""
    try:
        local, domain = _split(strip_path(address))
    except AddressSyntax:
        return strip_path(address)
    return f"{local}@{domain}" if domain else local


def canonical(address: str, *, resolved_by_mta: bool = False) -> str:
    """The canonical form of an envelope address: unquoted local part, lower case, no trailing dot, no route.

    ``resolved_by_mta``: the address is the MTA's own resolution (``{rcpt_addr}``), so whatever routing syntax is
    left in it is part of the mailbox name at the next hop. Otherwise routing syntax is refused (AddressSyntax):
    it names a mailbox only through the MTA's tables (is the right-hand side local?), which we do not read.
    The null sender stays ``""``.
    """
    text = strip_path(address)
    if not text:
        return ""
    if text.startswith("@"):  # source route @a,@b:user@domain: RFC 5321 says to ignore the route
        if resolved_by_mta:
            text = text.rpartition(":")[2]
        else:
            raise AddressSyntax(f"address {text!r}: source routes are not accepted for Direct mail")
    local, domain = _split(text)
    domain = domain.rstrip(".").lower()
    if not domain or not local:
        raise AddressSyntax(f"address {text!r}: a Direct address needs a local part and a domain")
    if not resolved_by_mta and any(mark in local for mark in _ROUTING):
        raise AddressSyntax(f"address {text!r}: '%' and '!' routing is not accepted for Direct mail (the MTA did "
                            "not say where it delivers it)")
    return f"{local.lower()}@{domain}"


def base_mailbox(address: str, delimiters: str) -> tuple[str, str]:
    """``bob+tag@d`` -> (``bob@d``, ``+tag``) for Postfix's recipient_delimiter characters; no delimiter, no
    change. Like Postfix, the first delimiter character in the local part starts the extension."""
    local, _, domain = address.rpartition("@")
    if not delimiters or not local:
        return address, ""
    cut = min((local.find(d) for d in delimiters if d in local), default=-1)
    if cut <= 0:  # no extension, or a local part that is all extension ("+x"): Postfix keeps it whole
        return address, ""
    return f"{local[:cut]}@{domain}", local[cut:]
