import socket, sys, time
n=int(sys.argv[1]); chunk=b"x"*65536
c=socket.create_connection(("127.0.0.1",18090))
c.sendall(b"POST /up HTTP/1.1\r\nHost: t.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
frame=b"10000\r\n"+chunk+b"\r\n"
t=time.time()
for i in range(n): c.sendall(frame)
c.sendall(b"0\r\n\r\n")
print(c.recv(4096).decode().split("\r\n\r\n")[-1], "bytes at backend in", round(time.time()-t,1),"s")
