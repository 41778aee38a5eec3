"""Send or receive random bytes over TCP and print their count and MD5 (a bulk transfer checker).

  tcp_blob.py serve PORT          accept one connection, read to EOF, print "<n> <md5>"
  tcp_blob.py send IP PORT N      send N random bytes, print "<n> <md5>"
Run inside a container's network namespace with `nsenter -t <pid> -n`.
"""
import hashlib
import os
import socket
import sys

if sys.argv[1] == "serve":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(sys.argv[2])))
    listener.listen(1)
    listener.settimeout(30)
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(30)
    digest, n = hashlib.md5(), 0
    while chunk := conn.recv(65536):
        digest.update(chunk)
        n += len(chunk)
    conn.close()
    print(n, digest.hexdigest(), flush=True)
else:
    data = os.urandom(int(sys.argv[4]))
    sock = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the server's close: everything arrived
    sock.close()
    print(len(data), hashlib.md5(data).hexdigest(), flush=True)
