//go:build !linux

package gateway

import "net"

// listenTCP listens on addr for local clients, with Go's default TCP
// keepalive on each accepted connection.
func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
