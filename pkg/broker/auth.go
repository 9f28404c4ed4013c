package broker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// User is a user of the embedded server.
type User struct {
	Name, Password string
	// Permissions bound what it may publish and subscribe; nil: anything.
	Permissions *server.Permissions
}

// Users of the embedded server, by role.
const (
	UserProcess    = "cardmeter"  // the all-in-one's own roles, in-process
	UserAdmin      = "admin"      // tools: rebuild, the chaos harness, the nats CLI
	UserSubscriber = "subscriber" // downstream services reading the emitted events
)

// InboxPrefix is a user's own reply subjects: JetStream's answers and the
// messages its consumers deliver go there, and only that user may
// subscribe to them (with the shared _INBOX.> any user could read every
// other's replies: the directory, the inputs, the audit). Connect with
// nats.CustomInboxPrefix(InboxPrefix(user)).
func InboxPrefix(user string) string { return "_INBOX_" + user }

// NewPassword returns a random password (128 bits, hex).
func NewPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b)
}

// SubscriberPermissions are a downstream service's: it reads the emitted
// events (cardmeter.events.>) live, or through the durable consumers on
// EVENTS named in consumers (JetStream permissions name a consumer whole:
// a prefix cannot be allowed), and nothing else. It cannot publish into
// any stream, read the inputs, the counted usage, the rejections or the
// buckets, nor delete or change another's consumer.
func SubscriberPermissions(consumers []string) *server.Permissions {
	pub := []string{"$JS.API.INFO", "$JS.API.STREAM.INFO." + StreamEvents}
	for _, c := range consumers {
		pub = append(pub,
			"$JS.API.CONSUMER.CREATE."+StreamEvents+"."+c,
			"$JS.API.CONSUMER.CREATE."+StreamEvents+"."+c+".>",
			"$JS.API.CONSUMER.DURABLE.CREATE."+StreamEvents+"."+c,
			"$JS.API.CONSUMER.INFO."+StreamEvents+"."+c,
			"$JS.API.CONSUMER.MSG.NEXT."+StreamEvents+"."+c,
			"$JS.ACK."+StreamEvents+"."+c+".>",
		)
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{InboxPrefix(UserSubscriber) + ".>", "cardmeter.events.>"}},
	}
}

func serverUsers(us []User) []*server.User {
	if len(us) == 0 {
		return nil // no users configured: anyone may connect
	}
	out := make([]*server.User, 0, len(us))
	for _, u := range us {
		out = append(out, &server.User{Username: u.Name, Password: u.Password, Permissions: u.Permissions})
	}
	return out
}

// Roles with their own users on a NATS server the roles share.
const (
	RoleIngest    = "ingest"
	RoleProjector = "projector"
	RoleClock     = "clock"
	RoleSink      = "sink"
	RoleNotifier  = "notifier" // delivers events to webhooks
	RoleActuator  = "actuator" // acts on the carriers
	RoleRebuild   = "rebuild"  // the `cardmeter rebuild` tool: reads the log
)

// Roles lists the roles RolePermissions knows.
var Roles = []string{RoleIngest, RoleProjector, RoleClock, RoleSink, RoleNotifier, RoleActuator, RoleRebuild}

// reads are the JetStream API subjects that read stream: its messages by
// sequence, and consumers on it (durable, ephemeral and ordered ones, whose
// names are made up as they are created).
func reads(stream string) []string {
	return []string{
		"$JS.API.STREAM.MSG.GET." + stream,
		"$JS.API.DIRECT.GET." + stream, "$JS.API.DIRECT.GET." + stream + ".>",
		"$JS.API.CONSUMER.CREATE." + stream, "$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".>",
		"$JS.API.CONSUMER.DELETE." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
		"$JS.ACK." + stream + ".>",
		"$JS.FC." + stream + ".>",
	}
}

// gets are the subjects that read single messages of stream, by sequence
// or by subject, without a consumer.
func gets(stream string) []string {
	return []string{"$JS.API.STREAM.MSG.GET." + stream, "$JS.API.DIRECT.GET." + stream, "$JS.API.DIRECT.GET." + stream + ".>"}
}

// kv are the subjects that read and write a key-value bucket.
func kv(bucket string) []string { return append(reads("KV_"+bucket), "$KV."+bucket+".>") }

// leases are the subjects that read the lease bucket and write role's
// keys in it (its partitions' leases and its members).
func leases(role string) []string {
	return append(reads("KV_"+BucketLeases), "$KV."+BucketLeases+"."+role+".>")
}

// objects are the subjects that read, write and delete in an object store.
func objects(bucket string) []string {
	return append(reads("OBJ_"+bucket), "$O."+bucket+".>", "$JS.API.STREAM.PURGE.OBJ_"+bucket)
}

// RolePermissions are a role's least privilege on a NATS server the roles
// share: what it publishes, the streams and buckets it reads, and nothing
// more. No role creates or changes streams (the setup step does, as the
// admin), and none publishes what another role emits: ingest cannot
// publish events or counted usage, the projector cannot publish inputs.
// Every role may read any stream's info (its configuration and counts,
// not its messages), so that it can wait for the topology at start.
func RolePermissions(role string) *server.Permissions {
	pub := []string{"$JS.API.INFO", "$JS.API.STREAM.INFO.*"}
	sub := []string{InboxPrefix(role) + ".>"}
	// every role reports itself in the status bucket, under its name; the
	// API reads every report
	pub = append(pub, "$KV."+BucketStatus+"."+role+".>")
	if role == RoleIngest {
		pub = append(pub, reads("KV_"+BucketStatus)...)
	}
	var resp *server.ResponsePermission
	switch role {
	case RoleIngest:
		pub = append(pub, "meter.*.usage", "meter.*.billing", "meter.*.clock", "rejected.>", "audit.>", "cardmeter.query.*")
		// single messages of METER (the clock's last tick) and EVENTS (a
		// card's history), no consumers there: those streams hold the
		// projector's, the sink's and subscribers'
		pub = append(pub, gets(StreamMeter)...)
		pub = append(pub, gets(StreamEvents)...)
		pub = append(pub, reads(StreamRejected)...)
		pub = append(pub, reads(StreamAudit)...)
		pub = append(pub, kv(BucketDir)...)
		pub = append(pub, kv(BucketBatches)...)
		pub = append(pub, kv(BucketResolved)...)
		// webhook subscriptions, their attempts and dead letters
		pub = append(pub, kv(BucketWebhooks)...)
		pub = append(pub, reads(StreamAttempts)...)
		pub = append(pub, reads(StreamDead)...)
		// what-if simulations: it files a job and asks a simulator to run it
		pub = append(pub, SimulateSubject)
		pub = append(pub, kv(BucketSimulations)...)
	case RoleProjector:
		pub = append(pub, "cardmeter.events.>", "accepted.>")
		// it runs the simulations (it may read the log)
		sub = append(sub, SimulateSubject)
		pub = append(pub, kv(BucketSimulations)...)
		pub = append(pub, reads(StreamMeter)...)
		pub = append(pub, objects(BucketSnapshot)...)
		pub = append(pub, kv(BucketCheckpoints)...)
		pub = append(pub, leases(RoleProjector)...)
		sub = append(sub, "cardmeter.query.*")
		resp = &server.ResponsePermission{MaxMsgs: 1, Expires: server.DEFAULT_ALLOW_RESPONSE_EXPIRATION} // answers to queries
	case RoleClock:
		pub = append(pub, "meter.*.clock")
		pub = append(pub, gets(StreamMeter)...) // its last tick
	case RoleSink:
		return SinkPermissions()
	case RoleNotifier:
		// durable consumers on EVENTS (its own are webhook-<id>; NATS
		// permissions cannot match part of a name, so any there), no
		// other stream's
		pub = append(pub, gets(StreamEvents)...)
		pub = append(pub,
			"$JS.API.CONSUMER.CREATE."+StreamEvents+".*", "$JS.API.CONSUMER.CREATE."+StreamEvents+".*.>",
			"$JS.API.CONSUMER.INFO."+StreamEvents+".*", "$JS.API.CONSUMER.DELETE."+StreamEvents+".*",
			"$JS.API.CONSUMER.RESET."+StreamEvents+".*", "$JS.API.CONSUMER.MSG.NEXT."+StreamEvents+".*",
			"$JS.API.CONSUMER.NAMES."+StreamEvents, "$JS.ACK."+StreamEvents+".*.>")
		pub = append(pub, kv(BucketWebhooks)...)
		pub = append(pub, "webhooks.attempts.>", "webhooks.dead.>", "meter.*.outcome")
		pub = append(pub, kv(BucketRetries)...)
		pub = append(pub, reads(StreamDead)...) // replays of dead letters
		pub = append(pub, "$JS.API.STREAM.MSG.DELETE."+StreamDead, "$JS.API.STREAM.PURGE."+StreamDead)
		pub = append(pub, leases(RoleNotifier)...)
	case RoleActuator:
		// its durable consumer on EVENTS, the directory (a card's carrier),
		// its lease, and outcomes into METER
		pub = append(pub,
			"$JS.API.CONSUMER.CREATE."+StreamEvents+".*", "$JS.API.CONSUMER.CREATE."+StreamEvents+".*.>",
			"$JS.API.CONSUMER.INFO."+StreamEvents+".*", "$JS.API.CONSUMER.RESET."+StreamEvents+".*",
			"$JS.API.CONSUMER.MSG.NEXT."+StreamEvents+".*", "$JS.ACK."+StreamEvents+".*.>")
		pub = append(pub, reads("KV_"+BucketDir)...)
		pub = append(pub, leases(RoleActuator)...)
		pub = append(pub, "meter.*.outcome", "cardmeter.query.*") // outcomes; cards' states, to reconcile
	case RoleRebuild:
		pub = append(pub, reads(StreamMeter)...)
	default:
		return nil
	}
	return &server.Permissions{Publish: &server.SubjectPermission{Allow: pub}, Subscribe: &server.SubjectPermission{Allow: sub}, Response: resp}
}

// SinkPermissions are the sink's: it reads ACCEPTED with ordered
// consumers, and EVENTS with ordered consumers created with the filter of
// all events in the request's subject (the consumer names are made up as
// they are created; a subscriber's consumer on EVENTS made without that
// filter is out of the sink's reach); it takes its units' leases, writes
// its positions, and deletes the consumers of older sinks (on EVENTS,
// only the compose stack's; its ordered consumers there age out when
// left).
func SinkPermissions() *server.Permissions {
	pub := []string{"$JS.API.INFO", "$JS.API.STREAM.INFO.*"}
	pub = append(pub, reads(StreamAccepted)...)
	pub = append(pub,
		"$JS.API.CONSUMER.CREATE."+StreamEvents+".*.cardmeter.events.>",
		"$JS.API.CONSUMER.INFO."+StreamEvents+".*",
		"$JS.API.CONSUMER.DELETE."+StreamEvents+".sink-cardmeter-events", // an older sink's, in the compose stack
		"$JS.API.CONSUMER.MSG.NEXT."+StreamEvents+".*")
	pub = append(pub, leases(RoleSink)...)
	pub = append(pub, kv(BucketSink)...)
	pub = append(pub, "$KV."+BucketStatus+"."+RoleSink+".>") // its status reports
	return &server.Permissions{Publish: &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{InboxPrefix(RoleSink) + ".>"}}}
}

// UsersConf renders the users of a NATS server the roles share, in the
// server's configuration syntax (deploy/nats/users.conf is made by it):
// the admin, each role with RolePermissions, and the subscriber with
// SubscriberPermissions for consumers. Each password is the environment
// variable CARDMETER_NATS_<USER>_PASSWORD of the NATS server.
func UsersConf(consumers []string) string {
	var b strings.Builder
	b.WriteString("# The NATS users of cardmeter's roles, each with least privilege. Made by\n" +
		"# `go test ./deploy -run TestNATSUsers -update` from broker.RolePermissions:\n" +
		"# do not edit. Passwords come from the server's environment.\n")
	b.WriteString("authorization {\n  users = [\n")
	user := func(name string, p *server.Permissions) {
		fmt.Fprintf(&b, "    {\n      user: %s\n      password: $CARDMETER_NATS_%s_PASSWORD\n", name, strings.ToUpper(name))
		if p != nil {
			b.WriteString("      permissions: {\n")
			list := func(what string, sp *server.SubjectPermission) {
				if sp == nil {
					return
				}
				fmt.Fprintf(&b, "        %s: {\n          allow: [\n", what)
				for _, s := range sp.Allow {
					fmt.Fprintf(&b, "            %q\n", s)
				}
				b.WriteString("          ]\n        }\n")
			}
			list("publish", p.Publish)
			list("subscribe", p.Subscribe)
			if p.Response != nil {
				fmt.Fprintf(&b, "        allow_responses: {max: %d, expires: \"%s\"}\n", p.Response.MaxMsgs, p.Response.Expires)
			}
			b.WriteString("      }\n")
		}
		b.WriteString("    }\n")
	}
	user(UserAdmin, nil)
	for _, r := range Roles {
		user(r, RolePermissions(r))
	}
	user(UserSubscriber, SubscriberPermissions(consumers))
	b.WriteString("  ]\n}\n")
	return b.String()
}
