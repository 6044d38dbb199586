package gateway

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenTCP listens on addr for local clients. TCP keepalive (first probe
// after 15s idle, then every 15s, nine probes, as Go's default) is set on
// the listening socket, which Linux copies to every accepted one, instead
// of taking four setsockopt calls per new connection.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []struct{ level, opt, v int }{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
				{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
			} {
				if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}
