import socket, threading
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",18091)); s.listen(16)
def serve(c):
    buf=b""; total=0
    while b"\r\n\r\n" not in buf:
        d=c.recv(65536)
        if not d: return
        buf+=d
    rest=buf[buf.index(b"\r\n\r\n")+4:]
    tail=rest[-5:]; total+=len(rest)
    while not tail.endswith(b"0\r\n\r\n"):
        d=c.recv(1<<20)
        if not d: return
        total+=len(d); tail=(tail+d)[-5:]
    body=str(total).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)); c.close()
while True:
    c,_=s.accept(); threading.Thread(target=serve,args=(c,)).start()
