# A stand-in for systemd's notification socket: binds a Unix datagram socket,
# prints "listening", then prints each message received (one line each, with
# newlines inside a message shown as "|"), and closes any file descriptors
# passed with it, as systemd does, so systemd-notify's barrier completes.
import array, os, socket, sys

path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print("listening", flush=True)
while True:
    msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            for fd in fds:
                os.close(fd)
    print(msg.decode().replace("\n", "|"), flush=True)
