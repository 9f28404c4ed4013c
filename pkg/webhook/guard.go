package webhook

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// refusedRanges are not reachable in the public internet: the shared
// space of carrier-grade NAT (RFC 6598), the IETF protocol assignments,
// benchmarking and the reserved class E.
var refusedRanges = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("240.0.0.0/4")}

// nat64 are the prefixes that embed an IPv4 address in their last 32 bits
// (RFC 6052, RFC 8215): an IPv6-only network reaches IPv4 through them.
var nat64 = []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96"), netip.MustParsePrefix("64:ff9b:1::/48")}

// Refused reports why addr may not be delivered to (empty: it may): the
// loopback, link-local, private, unspecified and multicast ranges, which
// would let a subscription reach inside the network cardmeter runs in.
func Refused(addr netip.Addr) string {
	addr = addr.Unmap()
	for _, p := range nat64 {
		if p.Contains(addr) {
			b := addr.As16()
			return Refused(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		}
	}
	for _, p := range refusedRanges {
		if p.Contains(addr) {
			return "a reserved address"
		}
	}
	switch {
	case addr.IsLoopback():
		return "a loopback address"
	case addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast():
		return "a link-local address"
	case addr.IsPrivate():
		return "a private address"
	case addr.IsUnspecified():
		return "an unspecified address"
	case addr.IsMulticast() || addr.IsInterfaceLocalMulticast():
		return "a multicast address"
	}
	return ""
}

// RefusedError is a delivery refused for the address its host resolved to.
type RefusedError struct {
	Addr, Why string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused to connect to %s: %s (start with --webhook-allow-private to allow it)", e.Addr, e.Why)
}

// Client is the HTTP client deliveries go through. Unless allowPrivate,
// it checks every address it connects to, after resolution, so that a
// name resolving to a private address (now, or after a change of its
// DNS) is refused at delivery time; no proxy from the environment, no
// redirects followed (a redirect's target would escape the check).
func Client(timeout time.Duration, allowPrivate bool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		d.Control = func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &RefusedError{Addr: address, Why: "not an IP address"}
			}
			if why := Refused(ap.Addr()); why != "" {
				return &RefusedError{Addr: ap.Addr().String(), Why: why}
			}
			return nil
		}
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost:   MaxParallel,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
