package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// Caller is a process attested from the unix socket's peer credentials.
type Caller struct {
	PID      int32
	UID, GID uint32
	// Path is the caller's executable, from /proc/<pid>/exe; empty when it
	// cannot be read (then path selectors do not match).
	Path string
}

// AuthType implements credentials.AuthInfo.
func (Caller) AuthType() string { return "unix-peercred" }

// Selectors are the caller's attributes as unix selectors.
func (c Caller) Selectors() map[string]string {
	m := map[string]string{"uid": strconv.FormatUint(uint64(c.UID), 10), "gid": strconv.FormatUint(uint64(c.GID), 10)}
	if c.Path != "" {
		m["path"] = c.Path
	}
	return m
}

// peerCreds attests callers by SO_PEERCRED. It adds no encryption: the
// socket is local and its peer is vouched for by the kernel.
type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("workloadapi: not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if serr != nil {
		return nil, nil, fmt.Errorf("workloadapi: peer credentials: %w", serr)
	}
	c := Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cred.Pid)); err == nil {
		c.Path = exe
	}
	return conn, c, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workloadapi: server-side credentials only")
}
func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }
