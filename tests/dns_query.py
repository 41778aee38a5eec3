"""Query a DNS server and print the result as JSON (run inside a test host)."""
import json
import socket
import sys

from dnslib import DNSRecord, RCODE

server, name, qtype, transport = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
host, _, port = server.rpartition(":")
q = DNSRecord.question(name, qtype)
try:
    reply = DNSRecord.parse(q.send(host, int(port), tcp=(transport == "tcp"), timeout=8))
except socket.timeout:
    print(json.dumps({"rcode": "TIMEOUT"}))
    sys.exit(0)
print(json.dumps({"rcode": RCODE[reply.header.rcode], "tc": reply.header.tc, "aa": reply.header.aa,
                  "answers": [str(rr.rdata) for rr in reply.rr], "names": [str(rr.rname) for rr in reply.rr]}))
