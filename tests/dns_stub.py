"""A stub upstream DNS server for tests (run inside a test namespace): *.example.com -> 192.0.2.10."""
import socketserver
import struct
import sys
import threading

from dnslib import A, DNSRecord, QTYPE, RCODE, RR


def answer(data: bytes) -> bytes:
    q = DNSRecord.parse(data)
    reply = q.reply()
    name = str(q.q.qname).lower()
    if name.endswith("example.com.") and q.q.qtype == QTYPE.A:
        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=60))
    elif name.endswith(".in-addr.arpa.") and name.startswith("10.2.0.192"):
        reply.add_answer(RR(q.q.qname, QTYPE.PTR, rdata=__import__("dnslib").PTR("stub.example.com."), ttl=60))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    return reply.pack()


class UDP(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(answer(data), self.client_address)


class TCP(socketserver.StreamRequestHandler):
    def handle(self):
        size = struct.unpack("!H", self.rfile.read(2))[0]
        out = answer(self.rfile.read(size))
        self.wfile.write(struct.pack("!H", len(out)) + out)


if __name__ == "__main__":
    addr = (sys.argv[1], 53)
    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer(addr, UDP)
    tcp = socketserver.ThreadingTCPServer(addr, TCP)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()
