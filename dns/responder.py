"""Answering DNS queries for the weave domain (sans-IO: bytes in, an action out).

`handle(query_bytes, tcp)` returns reply bytes, a `Forward` (the query belongs
to the upstream servers), or None (malformed: drop it).  Local A answers are
packed once by dnslib and cached until the records change; a cached answer is
re-used by patching the ID and shuffling its fixed-size A records, which is
what lets a Python server keep pace with dnsmasq.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass

from dnslib import A, DNSError, DNSHeader, DNSRecord, PTR, QTYPE, RCODE, RR

from .records import Records, View

UDP_LIMIT = 512
FAST_CACHE_MAX = 10000  # distinct query forms remembered between record changes
A_RR_SIZE = 16  # name pointer (2) + type, class, ttl, rdlength (10) + IPv4 (4)
REVERSE_ZONE = "in-addr.arpa."


@dataclass
class Forward:
    query: DNSRecord
    tcp: bool


class AnswerCache:
    """Packed answers for one generation of the records, and nothing else.

    Replaced whole when the records change; a query answered from an older
    view (another thread got there first) writes to the old cache, which is
    thrown away, so a stale answer can never outlive the change.
    """

    def __init__(self, generation: int):
        self.generation = generation
        self.answers: dict[tuple, tuple[bytes, list[bytes]]] = {}
        # query bytes after the ID -> the reply after its ID (one record: nothing to shuffle),
        # or (packed head, packed A records, size limit): a repeated query is never parsed
        self.fast_udp: dict[bytes, object] = {}
        self.fast_tcp: dict[bytes, object] = {}


class Responder:
    def __init__(self, records: Records, ttl: int = 1):
        self.records = records
        self.ttl = ttl
        self._cache = AnswerCache(-1)

    def _cache_for(self, view: View) -> AnswerCache:
        cache = self._cache
        if cache.generation != view.generation:
            cache = AnswerCache(view.generation)
            if view.generation > self._cache.generation:
                self._cache = cache  # else: an older view than the cache's; fill a throw-away one
        return cache

    # -- entry point ------------------------------------------------------
    def handle(self, data: bytes, tcp: bool = False):
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray cannot be a cache key
        view = self.records.view  # read once: names and generation from one state
        cache = self._cache
        if cache.generation == view.generation:
            hit = (cache.fast_tcp if tcp else cache.fast_udp).get(data[2:])
            if hit is not None:
                return data[:2] + hit if type(hit) is bytes else _assemble(data[:2], *hit)
        out = self._dispatch(data, tcp, view)
        return bytes(out) if isinstance(out, bytearray) else out

    def _dispatch(self, data: bytes, tcp: bool, view: View):
        if len(data) < 12:
            return None
        try:
            query = DNSRecord.parse(data)
        except (DNSError, Exception):  # dnslib raises several kinds on garbage
            return None
        if query.header.qr:
            return None  # a response, not a query
        if not query.questions:
            return self._reply(query, RCODE.SERVFAIL).pack()
        limit = None if tcp else udp_limit(query)
        name = str(query.q.qname)
        lname = name.lower()
        domain = self.records.domain.lower()
        if lname == domain or lname.endswith("." + domain):
            return self._local(query, name, data, limit, view)
        if lname.endswith("." + REVERSE_ZONE) or lname == REVERSE_ZONE:
            return self._reverse(query, lname, tcp, view)
        if lname.count(".") == 1 and len(query.questions) == 1 and lname != ".":
            return self._local(query, name, data, limit, view)  # a bare label: as if the domain were appended
        return Forward(query, tcp)

    # -- answers from our records ---------------------------------------------
    def _local(self, query: DNSRecord, name: str, data: bytes, limit: int | None, view: View):
        if len(query.questions) > 1:
            return self._reply(query, RCODE.NXDOMAIN, aa=False).pack()
        lookup = name if name.lower() != "." else "." + self.records.domain
        if lookup.count(".") == 1:
            lookup = lookup + self.records.domain
        addrs = view.lookup(lookup)
        if not addrs:
            return self._reply(query, RCODE.NXDOMAIN, aa=False).pack()
        if query.q.qtype != QTYPE.A:
            return self._reply(query, RCODE.NOERROR).pack()  # the name exists, not with that type
        return self._cached_a_answer(query, name, addrs, data, limit, self._cache_for(view))

    def _cached_a_answer(self, query: DNSRecord, name: str, addrs, data: bytes, limit: int | None,
                         cache: AnswerCache) -> bytes:
        key = (name, query.q.qclass, query.header.rd, query.header.cd)
        hit = cache.answers.get(key)
        if hit is None:
            reply = self._reply(query, RCODE.NOERROR)
            for a in addrs:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(a), ttl=self.ttl))
            packed = reply.pack()
            head_len = len(packed) - A_RR_SIZE * len(addrs)
            body = packed[head_len:]
            hit = (packed[:head_len], [body[i:i + A_RR_SIZE] for i in range(0, len(body), A_RR_SIZE)])
            if any(len(rr) != A_RR_SIZE or rr[:2] != b"\xc0\x0c" for rr in hit[1]):
                return self._truncate(reply, limit)  # not the compact form we can re-use
            cache.answers[key] = hit
        fast = cache.fast_udp if limit is not None else cache.fast_tcp
        if len(fast) >= FAST_CACHE_MAX:
            fast.clear()
        reply = _assemble(data[:2], hit[0], hit[1], limit)
        fast[data[2:]] = reply[2:] if len(hit[1]) == 1 else (hit[0], hit[1], limit)
        return reply

    def _reverse(self, query: DNSRecord, lname: str, tcp: bool, view: View):
        if query.q.qtype != QTYPE.PTR or len(query.questions) > 1:
            return self._reply(query, RCODE.NXDOMAIN, aa=False).pack()
        octets = lname[: -len("." + REVERSE_ZONE)].split(".")
        try:
            addr = str(ipaddress.IPv4Address(".".join(reversed(octets))))
        except ValueError:
            return self._reply(query, RCODE.NXDOMAIN, aa=False).pack()
        hostname = view.reverse(addr)
        if hostname is None:
            return Forward(query, tcp)
        reply = self._reply(query, RCODE.NOERROR)
        reply.add_answer(RR(query.q.qname, QTYPE.PTR, rdata=PTR(hostname), ttl=self.ttl))
        return reply.pack()

    # -- helpers -----------------------------------------------------------
    def _reply(self, query: DNSRecord, rcode: int, aa: bool = True) -> DNSRecord:
        header = DNSHeader(id=query.header.id, qr=1, aa=int(aa and rcode == RCODE.NOERROR), ra=1,
                           rd=query.header.rd, rcode=rcode)
        header.cd = query.header.cd
        reply = DNSRecord(header)
        if query.questions:
            reply.add_question(query.q)
        return reply

    def _truncate(self, reply: DNSRecord, limit: int | None) -> bytes:
        packed = reply.pack()
        if limit is None or len(packed) <= limit or len(reply.rr) <= 1:
            return packed
        lo, hi = 1, len(reply.rr)
        answers = list(reply.rr)
        while lo < hi:  # the largest prefix that fits
            mid = (lo + hi + 1) // 2
            reply.rr = answers[:mid]
            if len(reply.pack()) <= limit:
                lo = mid
            else:
                hi = mid - 1
        reply.rr = answers[:lo]
        reply.header.tc = 1
        return reply.pack()


def _assemble(qid: bytes, head: bytes, rrs: list[bytes], limit: int | None) -> bytes:
    """A cached answer for a new query: its ID, the A records shuffled, cut to the size limit (TC set)."""
    if len(rrs) > 1:
        rrs = list(rrs)
        random.shuffle(rrs)
    count, tc = len(rrs), 0
    if limit is not None and len(head) + A_RR_SIZE * count > limit and count > 1:
        count = max(1, (limit - len(head)) // A_RR_SIZE)
        tc = 0x0200
    flags = struct.unpack_from("!H", head, 2)[0] | tc
    return qid + struct.pack("!HHH", flags, 1, count) + head[8:] + b"".join(rrs[:count])


def udp_limit(query: DNSRecord) -> int:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_LIMIT, rr.rclass)
    return UDP_LIMIT


def servfail(query: DNSRecord) -> bytes:
    header = DNSHeader(id=query.header.id, qr=1, ra=1, rd=query.header.rd, rcode=RCODE.SERVFAIL)
    reply = DNSRecord(header)
    for q in query.questions:
        reply.add_question(q)
    return reply.pack()
