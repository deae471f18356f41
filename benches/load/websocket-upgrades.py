import asyncio, sys, time
async def backend(r, w):
    buf=b""
    while b"\r\n\r\n" not in buf:
        d=await r.read(4096)
        if not d: return
        buf+=d
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"+buf[buf.index(b"\r\n\r\n")+4:])
    while True:
        d=await r.read(65536)
        if not d: break
        w.write(d); await w.drain()
    w.close()
REQ=b"GET /ws HTTP/1.1\r\nHost: w.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
async def client(i, fails):
    try:
        r,w=await asyncio.open_connection("127.0.0.1",18090)
        w.write(REQ); await w.drain()
        head=await asyncio.wait_for(r.readuntil(b"\r\n\r\n"),10)
        if not head.startswith(b"HTTP/1.1 101"): fails.append(("status",head[:20])); return
        msg=b"ping %d" % i; w.write(msg); await w.drain()
        got=await asyncio.wait_for(r.readexactly(len(msg)),10)
        if got!=msg: fails.append(("echo",got))
        w.close()
    except Exception as e: fails.append(("exc",repr(e)))
async def big():
    r,w=await asyncio.open_connection("127.0.0.1",18090)
    w.write(REQ); await w.drain(); await r.readuntil(b"\r\n\r\n")
    data=bytes(range(256))*40960  # 10 MiB
    async def send():
        w.write(data); await w.drain()
    t=asyncio.create_task(send())
    got=await asyncio.wait_for(r.readexactly(len(data)),60)
    await t
    return got==data
async def main():
    srv=await asyncio.start_server(backend,"127.0.0.1",18092, backlog=4096)
    fails=[]
    t=time.time()
    await asyncio.gather(*(client(i,fails) for i in range(2000)))
    print("2000 upgrades:", len(fails), "failed", fails[:3], round(time.time()-t,1),"s")
    print("10 MiB echoed both ways intact:", await big())
asyncio.run(main())
